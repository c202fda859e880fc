//! Our OPA Wasm host on wasmtime.
//!
//! Implements the OPA Wasm ABI (1.1 through 1.3): the module imports
//! `env.memory`, `env.opa_abort`, `env.opa_println` and `env.opa_builtin0..4`;
//! it exports `opa_malloc`, `opa_json_parse`, `opa_json_dump`,
//! `opa_heap_ptr_get/set`, `entrypoints`, `builtins` and either `opa_eval`
//! (1.2+) or the `opa_eval_ctx_*` + `eval` calls (1.1).
//!
//! A [`WasmPolicy`] is one compiled module (compiled once per revision); it
//! keeps a lock-free pool of [`Worker`]s, each its own `Store` + instance, so
//! concurrent evaluations never share a lock. Each store carries an epoch
//! deadline and a memory limiter. A worker whose evaluation failed is dropped
//! rather than returned to the pool.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use serde_json::Value;
use wasmtime::{
    AsContext, AsContextMut, Caller, Engine, Extern, ExternType, Func, Instance, Memory, Module,
    Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc, Val,
};

use crate::builtins::{self, BuiltinFn};
use crate::{Limits, PolicyError};

/// Milliseconds per epoch tick of the shared engine.
const EPOCH_TICK: Duration = Duration::from_millis(1);
const WASM_PAGE: u64 = 65_536;
/// Budget for instantiating a module and loading its data (off the hot path).
const INIT_DEADLINE: Duration = Duration::from_secs(10);

/// The process-wide engine (epoch interruption on) and its ticker thread.
fn engine() -> Result<&'static Engine, PolicyError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = wasmtime::Config::new();
            config.epoch_interruption(true);
            let engine = Engine::new(&config).map_err(|e| e.to_string())?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("signet-policy-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(EPOCH_TICK);
                        ticker.increment_epoch();
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(engine)
        })
        .as_ref()
        .map_err(|e| PolicyError::Engine(e.clone()))
}

/// Compiles a module, reusing the compilation of identical bytes (a reload
/// of an unchanged module, or the same module with other data). Compilation
/// takes tens of milliseconds; the lock is taken at load time only.
fn compile(wasm: &[u8]) -> Result<Module, PolicyError> {
    use sha2::{Digest, Sha256};
    const CACHE_SIZE: usize = 8;
    static CACHE: Mutex<Vec<([u8; 32], Module)>> = Mutex::new(Vec::new());
    let key: [u8; 32] = Sha256::digest(wasm).into();
    let cached =
        |c: &Vec<([u8; 32], Module)>| c.iter().find(|(k, _)| *k == key).map(|(_, m)| m.clone());
    if let Some(m) = CACHE.lock().ok().and_then(|c| cached(&c)) {
        return Ok(m);
    }
    let module = Module::new(engine()?, wasm).map_err(|e| PolicyError::Compile(e.to_string()))?;
    if let Ok(mut c) = CACHE.lock() {
        if c.len() >= CACHE_SIZE {
            c.remove(0);
        }
        c.push((key, module.clone()));
    }
    Ok(module)
}

fn ticks(deadline: Duration) -> u64 {
    let t = deadline.as_millis() / EPOCH_TICK.as_millis();
    // At least one full tick after the next one, so a deadline is never zero.
    u64::try_from(t).unwrap_or(u64::MAX).max(1) + 1
}

/// Host builtins indexed by the module's builtin id.
type BuiltinTable = Arc<Vec<Option<(String, BuiltinFn)>>>;

/// `opa_eval(reserved, entrypoint, data, input, input_len, heap_ptr, format) -> result`.
type OpaEvalFn = TypedFunc<(i32, i32, i32, i32, i32, i32, i32), i32>;

/// The exports the host calls back into from builtins.
#[derive(Clone)]
struct Exports {
    memory: Memory,
    malloc: TypedFunc<i32, i32>,
    json_parse: TypedFunc<(i32, i32), i32>,
    json_dump: TypedFunc<i32, i32>,
}

struct HostState {
    limits: StoreLimits,
    /// Host builtins by the module's builtin id.
    builtins: BuiltinTable,
    exports: Option<Exports>,
    abort: Option<String>,
}

/// A compiled OPA Wasm module and its worker pool.
pub(crate) struct WasmPolicy {
    module: Module,
    entrypoints: BTreeMap<String, i32>,
    builtin_names: Vec<String>,
    builtins: BuiltinTable,
    data: Arc<Vec<u8>>,
    limits: Limits,
    abi: (i32, i32),
    pool: ArrayQueue<Box<Worker>>,
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy")
            .field("entrypoints", &self.entrypoints)
            .field("builtins", &self.builtin_names)
            .field("abi", &self.abi)
            .finish_non_exhaustive()
    }
}

impl WasmPolicy {
    /// Compiles `wasm`, instantiates it once to read its entrypoints and
    /// builtins (refusing a missing builtin by name) and keeps that instance.
    pub(crate) fn new(wasm: &[u8], data: &Value, limits: Limits) -> Result<Self, PolicyError> {
        let module = compile(wasm)?;
        let data =
            Arc::new(serde_json::to_vec(data).map_err(|e| PolicyError::Data(e.to_string()))?);
        let mut policy = WasmPolicy {
            module,
            entrypoints: BTreeMap::new(),
            builtin_names: Vec::new(),
            builtins: Arc::new(Vec::new()),
            data,
            limits,
            abi: (0, 0),
            pool: ArrayQueue::new(limits.pool_size.max(1)),
        };
        // First instance: discover the ABI, entrypoints and builtins.
        let mut worker = policy.instantiate(None)?;
        let builtins_map = worker.dump_export("builtins")?;
        let mut table: Vec<Option<(String, BuiltinFn)>> = Vec::new();
        if let Value::Object(map) = &builtins_map {
            for (name, id) in map {
                let id = id
                    .as_u64()
                    .and_then(|i| usize::try_from(i).ok())
                    .ok_or_else(|| PolicyError::Abi(format!("bad builtin id for {name}")))?;
                let f = builtins::lookup(name)
                    .ok_or_else(|| PolicyError::MissingBuiltin(name.clone()))?;
                if table.len() <= id {
                    table.resize(id + 1, None);
                }
                // In bounds: the table was just resized to hold `id`.
                table[id] = Some((name.clone(), f));
                policy.builtin_names.push(name.clone());
            }
        }
        if let Value::Object(map) = worker.dump_export("entrypoints")? {
            for (name, id) in map {
                let id = id
                    .as_i64()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| PolicyError::Abi(format!("bad entrypoint id for {name}")))?;
                policy.entrypoints.insert(name, id);
            }
        }
        policy.builtins = Arc::new(table);
        policy.abi = worker.abi;
        // Rebuild the first worker with the builtin table in place.
        drop(worker);
        let worker = policy.instantiate(Some(policy.builtins.clone()))?;
        let _ = policy.pool.push(Box::new(worker));
        Ok(policy)
    }

    pub(crate) fn entrypoints(&self) -> impl Iterator<Item = &str> {
        self.entrypoints.keys().map(String::as_str)
    }

    pub(crate) fn builtins(&self) -> &[String] {
        &self.builtin_names
    }

    pub(crate) fn abi(&self) -> (i32, i32) {
        self.abi
    }

    pub(crate) fn entrypoint_id(&self, name: &str) -> Option<i32> {
        self.entrypoints.get(name).copied()
    }

    fn instantiate(&self, builtins: Option<BuiltinTable>) -> Result<Worker, PolicyError> {
        Worker::new(
            &self.module,
            builtins.unwrap_or_else(|| self.builtins.clone()),
            &self.data,
            self.limits,
        )
    }

    /// Evaluates entrypoint `id`, returning OPA's result set
    /// (`[{"result": …}]`, or `[]` when undefined).
    pub(crate) fn eval(&self, id: i32, input: &Value) -> Result<Value, PolicyError> {
        let mut worker = match self.pool.pop() {
            Some(w) => w,
            None => Box::new(self.instantiate(None)?),
        };
        match worker.eval(id, input, self.limits.deadline) {
            Ok(v) => {
                // A full pool drops the extra worker.
                let _ = self.pool.push(worker);
                Ok(v)
            }
            // The worker's state is not trusted after an error: drop it; the
            // next evaluation builds a fresh one.
            Err(e) => Err(e),
        }
    }
}

/// One Store + instance.
struct Worker {
    store: Store<HostState>,
    instance: Instance,
    exports: Exports,
    heap_ptr_get: TypedFunc<(), i32>,
    heap_ptr_set: TypedFunc<i32, ()>,
    eval: EvalAbi,
    data_addr: i32,
    data_heap_ptr: i32,
    abi: (i32, i32),
}

// One per worker and never moved on the hot path: the size difference is moot.
#[allow(clippy::large_enum_variant)]
enum EvalAbi {
    /// ABI 1.2+: `opa_eval(reserved, entrypoint, data, input, input_len, heap_ptr, format)`.
    OneShot(OpaEvalFn),
    /// ABI 1.1: an evaluation context.
    Context {
        ctx_new: TypedFunc<(), i32>,
        set_input: TypedFunc<(i32, i32), ()>,
        set_data: TypedFunc<(i32, i32), ()>,
        set_entrypoint: Option<TypedFunc<(i32, i32), ()>>,
        eval: TypedFunc<i32, i32>,
        get_result: TypedFunc<i32, i32>,
    },
}

fn abi_err(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Abi(e.to_string())
}

fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<TypedFunc<P, R>, PolicyError> {
    instance
        .get_typed_func::<P, R>(&mut *store, name)
        .map_err(|e| PolicyError::Abi(format!("export {name}: {e}")))
}

fn read_cstr(memory: &Memory, store: impl AsContext, addr: i32) -> Result<String, String> {
    let data = memory.data(&store);
    let start = usize::try_from(addr).map_err(|_| "negative address")?;
    let tail = data.get(start..).ok_or("address out of bounds")?;
    let end = tail
        .iter()
        .position(|b| *b == 0)
        .ok_or("unterminated string")?;
    // In bounds: `end` is a position found inside `tail`.
    String::from_utf8(tail[..end].to_vec()).map_err(|e| e.to_string())
}

/// Loads JSON text into the module's heap and parses it into an OPA value.
fn load_json(
    exports: &Exports,
    mut store: impl AsContextMut,
    json: &[u8],
) -> wasmtime::Result<i32> {
    let len = i32::try_from(json.len()).map_err(|_| wasmtime::Error::msg("json too large"))?;
    let addr = exports.malloc.call(&mut store, len)?;
    let offset = usize::try_from(addr).map_err(|_| wasmtime::Error::msg("bad malloc address"))?;
    exports
        .memory
        .write(&mut store, offset, json)
        .map_err(|e| wasmtime::Error::msg(e.to_string()))?;
    let value = exports.json_parse.call(&mut store, (addr, len))?;
    if value == 0 {
        return Err(wasmtime::Error::msg("opa_json_parse failed"));
    }
    Ok(value)
}

fn dump_json(
    exports: &Exports,
    mut store: impl AsContextMut,
    value: i32,
) -> wasmtime::Result<Value> {
    let s = exports.json_dump.call(&mut store, value)?;
    let text = read_cstr(&exports.memory, &store, s).map_err(wasmtime::Error::msg)?;
    serde_json::from_str(&text).map_err(|e| wasmtime::Error::msg(e.to_string()))
}

/// `opa_builtinN`: dump the arguments, call the host function, load the
/// result. A failing builtin returns 0 (undefined), as OPA's non-strict mode.
fn call_builtin(
    caller: &mut Caller<'_, HostState>,
    id: i32,
    args: &[i32],
) -> wasmtime::Result<i32> {
    // The function is a plain fn pointer: copied out, so neither the table
    // (shared by every worker) nor the exports are cloned per call.
    let Some(f) = usize::try_from(id)
        .ok()
        .and_then(|i| caller.data().builtins.get(i))
        .and_then(Option::as_ref)
        .map(|(_, f)| *f)
    else {
        return Err(wasmtime::Error::msg(format!("unknown builtin id {id}")));
    };
    let exports = caller
        .data_mut()
        .exports
        .take()
        .ok_or_else(|| wasmtime::Error::msg("builtin called before instantiation finished"))?;
    let result = run_builtin(caller, &exports, id, f, args);
    caller.data_mut().exports = Some(exports);
    result
}

fn run_builtin(
    caller: &mut Caller<'_, HostState>,
    exports: &Exports,
    id: i32,
    f: crate::builtins::BuiltinFn,
    args: &[i32],
) -> wasmtime::Result<i32> {
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        values.push(dump_json(exports, &mut *caller, *a)?);
    }
    match f(&values) {
        Ok(result) => {
            let json =
                serde_json::to_vec(&result).map_err(|e| wasmtime::Error::msg(e.to_string()))?;
            load_json(exports, &mut *caller, &json)
        }
        Err(e) => {
            let name = usize::try_from(id)
                .ok()
                .and_then(|i| caller.data().builtins.get(i))
                .and_then(Option::as_ref)
                .map_or("?", |(name, _)| name.as_str());
            tracing::debug!(builtin = %name, error = %e, "policy builtin failed; expression is undefined");
            Ok(0)
        }
    }
}

impl Worker {
    fn new(
        module: &Module,
        builtins: BuiltinTable,
        data: &[u8],
        limits: Limits,
    ) -> Result<Worker, PolicyError> {
        let state = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_limit)
                .trap_on_grow_failure(true)
                .build(),
            builtins,
            exports: None,
            abort: None,
        };
        let mut store = Store::new(module.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(ticks(limits.deadline.max(INIT_DEADLINE)));

        let mut memory = None;
        let mut imports = Vec::new();
        for import in module.imports() {
            let (m, name) = (import.module(), import.name());
            let ext: Extern = match (m, name, import.ty()) {
                ("env", "memory", ExternType::Memory(ty)) => {
                    let mem = Memory::new(&mut store, ty)
                        .map_err(|e| PolicyError::Abi(format!("cannot create memory: {e}")))?;
                    memory = Some(mem);
                    mem.into()
                }
                ("env", "opa_abort", _) => Func::wrap(
                    &mut store,
                    |mut caller: Caller<'_, HostState>, addr: i32| -> wasmtime::Result<()> {
                        let msg = caller
                            .data()
                            .exports
                            .as_ref()
                            .map(|e| e.memory)
                            .or_else(|| caller.get_export("memory").and_then(Extern::into_memory))
                            .map(|m| read_cstr(&m, &caller, addr).unwrap_or_default())
                            .unwrap_or_default();
                        caller.data_mut().abort = Some(msg.clone());
                        Err(wasmtime::Error::msg(format!("opa_abort: {msg}")))
                    },
                )
                .into(),
                ("env", "opa_println", _) => Func::wrap(
                    &mut store,
                    |mut caller: Caller<'_, HostState>, addr: i32| {
                        if let Some(memory) = caller.data().exports.as_ref().map(|e| e.memory) {
                            let msg = read_cstr(&memory, &mut caller, addr).unwrap_or_default();
                            tracing::debug!(message = %msg, "policy println");
                        }
                    },
                )
                .into(),
                ("env", "opa_builtin0", _) => Func::wrap(
                    &mut store,
                    |mut c: Caller<'_, HostState>, id: i32, _ctx: i32| {
                        call_builtin(&mut c, id, &[])
                    },
                )
                .into(),
                ("env", "opa_builtin1", _) => Func::wrap(
                    &mut store,
                    |mut c: Caller<'_, HostState>, id: i32, _ctx: i32, a: i32| {
                        call_builtin(&mut c, id, &[a])
                    },
                )
                .into(),
                ("env", "opa_builtin2", _) => Func::wrap(
                    &mut store,
                    |mut c: Caller<'_, HostState>, id: i32, _ctx: i32, a: i32, b: i32| {
                        call_builtin(&mut c, id, &[a, b])
                    },
                )
                .into(),
                ("env", "opa_builtin3", _) => Func::wrap(
                    &mut store,
                    |mut c: Caller<'_, HostState>, id: i32, _ctx: i32, a: i32, b: i32, x: i32| {
                        call_builtin(&mut c, id, &[a, b, x])
                    },
                )
                .into(),
                ("env", "opa_builtin4", _) => Func::wrap(
                    &mut store,
                    |mut c: Caller<'_, HostState>,
                     id: i32,
                     _ctx: i32,
                     a: i32,
                     b: i32,
                     x: i32,
                     y: i32| { call_builtin(&mut c, id, &[a, b, x, y]) },
                )
                .into(),
                _ => return Err(PolicyError::Abi(format!("unsupported import {m}.{name}"))),
            };
            imports.push(ext);
        }
        let instance =
            Instance::new(&mut store, module, &imports).map_err(|e| map_trap(&store, e))?;
        let memory = match memory {
            Some(m) => m,
            None => instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| PolicyError::Abi("module has no memory".into()))?,
        };
        let exports = Exports {
            memory,
            malloc: typed(&instance, &mut store, "opa_malloc")?,
            json_parse: typed(&instance, &mut store, "opa_json_parse")?,
            json_dump: typed(&instance, &mut store, "opa_json_dump")?,
        };
        store.data_mut().exports = Some(exports.clone());
        let global = |store: &mut Store<HostState>, name: &str| -> Option<i32> {
            match instance.get_global(&mut *store, name)?.get(&mut *store) {
                Val::I32(v) => Some(v),
                _ => None,
            }
        };
        let abi = (
            global(&mut store, "opa_wasm_abi_version").unwrap_or(1),
            global(&mut store, "opa_wasm_abi_minor_version").unwrap_or(0),
        );
        if abi.0 != 1 {
            return Err(PolicyError::Abi(format!(
                "unsupported OPA Wasm ABI version {}.{}",
                abi.0, abi.1
            )));
        }
        let eval = if instance.get_func(&mut store, "opa_eval").is_some() {
            EvalAbi::OneShot(typed(&instance, &mut store, "opa_eval")?)
        } else {
            EvalAbi::Context {
                ctx_new: typed(&instance, &mut store, "opa_eval_ctx_new")?,
                set_input: typed(&instance, &mut store, "opa_eval_ctx_set_input")?,
                set_data: typed(&instance, &mut store, "opa_eval_ctx_set_data")?,
                set_entrypoint: typed(&instance, &mut store, "opa_eval_ctx_set_entrypoint").ok(),
                eval: typed(&instance, &mut store, "eval")?,
                get_result: typed(&instance, &mut store, "opa_eval_ctx_get_result")?,
            }
        };
        let heap_ptr_get: TypedFunc<(), i32> = typed(&instance, &mut store, "opa_heap_ptr_get")?;
        let heap_ptr_set: TypedFunc<i32, ()> = typed(&instance, &mut store, "opa_heap_ptr_set")?;
        let mut worker = Worker {
            store,
            instance,
            exports: exports.clone(),
            heap_ptr_get,
            heap_ptr_set,
            eval,
            data_addr: 0,
            data_heap_ptr: 0,
            abi,
        };
        worker.reset_deadline(limits.deadline.max(INIT_DEADLINE));
        worker.data_addr =
            load_json(&exports, &mut worker.store, data).map_err(|e| map_trap(&worker.store, e))?;
        worker.data_heap_ptr = worker
            .heap_ptr_get
            .call(&mut worker.store, ())
            .map_err(|e| map_trap(&worker.store, e))?;
        Ok(worker)
    }

    fn reset_deadline(&mut self, deadline: Duration) {
        self.store.set_epoch_deadline(ticks(deadline));
        self.store.data_mut().abort = None;
    }

    /// Calls a no-argument export returning a value and dumps it as JSON.
    fn dump_export(&mut self, name: &str) -> Result<Value, PolicyError> {
        let Some(func) = self.store_func(name) else {
            return Ok(Value::Object(Default::default()));
        };
        let f = func.typed::<(), i32>(&self.store).map_err(abi_err)?;
        let addr = f
            .call(&mut self.store, ())
            .map_err(|e| map_trap(&self.store, e))?;
        dump_json(&self.exports, &mut self.store, addr).map_err(|e| map_trap(&self.store, e))
    }

    fn store_func(&mut self, name: &str) -> Option<Func> {
        self.instance.get_func(&mut self.store, name)
    }

    fn eval(&mut self, id: i32, input: &Value, deadline: Duration) -> Result<Value, PolicyError> {
        let input = serde_json::to_vec(input).map_err(|e| PolicyError::Eval(e.to_string()))?;
        self.reset_deadline(deadline);
        let result = self.eval_inner(id, &input);
        result.map_err(|e| map_trap(&self.store, e))
    }

    fn eval_inner(&mut self, id: i32, input: &[u8]) -> wasmtime::Result<Value> {
        // Borrowed field by field: cloning the typed functions per call would
        // bump reference counts shared by every worker of the module.
        let Worker {
            store,
            exports,
            heap_ptr_set,
            eval,
            data_addr,
            data_heap_ptr,
            ..
        } = self;
        let (data_addr, data_heap_ptr) = (*data_addr, *data_heap_ptr);
        match eval {
            EvalAbi::OneShot(opa_eval) => {
                let len = i32::try_from(input.len())
                    .map_err(|_| wasmtime::Error::msg("input too large"))?;
                let input_addr = data_heap_ptr;
                let end = u64::try_from(input_addr).unwrap_or(0) + input.len() as u64;
                let size = exports.memory.data_size(&*store) as u64;
                if end > size {
                    let pages = (end - size).div_ceil(WASM_PAGE);
                    exports.memory.grow(&mut *store, pages)?;
                }
                let offset = usize::try_from(input_addr)
                    .map_err(|_| wasmtime::Error::msg("bad heap pointer"))?;
                exports
                    .memory
                    .write(&mut *store, offset, input)
                    .map_err(|e| wasmtime::Error::msg(e.to_string()))?;
                let addr = opa_eval.call(
                    &mut *store,
                    (0, id, data_addr, input_addr, len, input_addr + len, 0),
                )?;
                let text =
                    read_cstr(&exports.memory, &*store, addr).map_err(wasmtime::Error::msg)?;
                serde_json::from_str(&text).map_err(|e| wasmtime::Error::msg(e.to_string()))
            }
            EvalAbi::Context {
                ctx_new,
                set_input,
                set_data,
                set_entrypoint,
                eval,
                get_result,
            } => {
                heap_ptr_set.call(&mut *store, data_heap_ptr)?;
                let input_addr = load_json(exports, &mut *store, input)?;
                let ctx = ctx_new.call(&mut *store, ())?;
                set_input.call(&mut *store, (ctx, input_addr))?;
                set_data.call(&mut *store, (ctx, data_addr))?;
                if let Some(set_entrypoint) = set_entrypoint {
                    set_entrypoint.call(&mut *store, (ctx, id))?;
                } else if id != 0 {
                    return Err(wasmtime::Error::msg("module has no entrypoint selection"));
                }
                let rc = eval.call(&mut *store, ctx)?;
                if rc != 0 {
                    return Err(wasmtime::Error::msg(format!(
                        "eval returned error code {rc}"
                    )));
                }
                let result = get_result.call(&mut *store, ctx)?;
                dump_json(exports, &mut *store, result)
            }
        }
    }
}

/// Turns a wasmtime error into a typed policy error (deadline, memory, abort).
fn map_trap(store: &Store<HostState>, e: wasmtime::Error) -> PolicyError {
    if let Some(trap) = e.downcast_ref::<Trap>() {
        match trap {
            Trap::Interrupt => return PolicyError::Deadline,
            Trap::MemoryOutOfBounds | Trap::HeapMisaligned => {}
            _ => {}
        }
    }
    if let Some(msg) = &store.data().abort {
        if msg.contains("out of memory") || msg.contains("memory") {
            return PolicyError::MemoryLimit;
        }
        return PolicyError::Abort(msg.clone());
    }
    let text = format!("{e:#}");
    if text.contains("memory")
        && (text.contains("grow") || text.contains("limit") || text.contains("exceed"))
    {
        return PolicyError::MemoryLimit;
    }
    PolicyError::Eval(text)
}

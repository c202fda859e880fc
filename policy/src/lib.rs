//! Policy engines (OPA Wasm and Rego) evaluated per connection and per request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;

/// One frame as it travels: (type, flags, stream, payload).
type Frame = (u8, u8, u32, Vec<u8>);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings() -> Vec<u8> {
    frame(0x4, 0, 0, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x64])
}

fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_literal(name, value, &mut out);
    out
}

/// A request block: `:authority` as a literal with incremental indexing
/// (static name index 1), so it enters the client's dynamic table.
fn request_block(authority: &[u8], path: &[u8]) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x40 | 0x01);
    loona_hpack::encoder::encode_integer_into(authority.len(), 7, 0, &mut block).unwrap();
    block.extend_from_slice(authority);
    block.extend(literal(b":path", path));
    block.extend(literal(b"content-type", b"application/grpc"));
    block
}

fn run(input: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut r = Rewriter::default();
    r.input.extend_from_slice(input);
    r.process()?;
    Ok(r.output.to_vec())
}

/// Feeds `input` in pieces cut at `cuts`, as reads from a socket would.
fn run_in_pieces(input: &[u8], cuts: &[usize]) -> Result<Vec<u8>, FrameError> {
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts.into_iter().chain([input.len()]) {
        r.input.extend_from_slice(&input[at..cut]);
        at = cut;
        r.process()?;
        out.extend_from_slice(&r.output.split());
    }
    Ok(out)
}

fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
        frames.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    frames
}

/// Decodes the header blocks of `frames` as `h2` would: one decoder for the
/// connection, HEADERS + CONTINUATION joined. Checks that nothing we wrote
/// touches the dynamic table, so any table size announced by the server
/// works.
fn decode_blocks(frames: &[Frame]) -> Vec<(u32, Vec<(String, String)>)> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_table_size(0);
    let mut blocks = Vec::new();
    let mut open: Option<(u32, Vec<u8>)> = None;
    for (kind, flags, stream, payload) in frames {
        let fragment = match *kind {
            TYPE_HEADERS => {
                assert!(open.is_none(), "HEADERS inside an open block");
                assert_eq!(flags & FLAG_PADDED, 0, "we never pad");
                let skip = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                open = Some((*stream, Vec::new()));
                &payload[skip..]
            }
            TYPE_CONTINUATION => {
                assert_eq!(open.as_ref().unwrap().0, *stream);
                &payload[..]
            }
            _ => {
                assert!(open.is_none(), "frame inside an open block");
                continue;
            }
        };
        assert!(payload.len() <= MAX_OUT_PAYLOAD);
        open.as_mut().unwrap().1.extend_from_slice(fragment);
        if flags & FLAG_END_HEADERS != 0 {
            let (stream, block) = open.take().unwrap();
            let headers = decoder
                .decode(&block)
                .unwrap()
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            blocks.push((stream, headers));
        }
    }
    assert!(open.is_none(), "a block was left open");
    blocks
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn connection(blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    for (i, block) in blocks.iter().enumerate() {
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            2 * i as u32 + 1,
            block,
        ));
    }
    input
}

#[test]
fn every_authority_form_becomes_localhost() {
    for authority in [
        &b"/tmp/signet/agent.sock"[..],
        b"%2Ftmp%2Fsignet%2Fagent.sock",
        b"tmp%2Fsignet%2Fagent.sock",
        b"localhost",
        b"",
    ] {
        let out = run(&connection(&[request_block(authority, b"/a/B")])).unwrap();
        assert!(out.starts_with(PREFACE));
        let frames = parse_frames(&out[PREFACE.len()..]);
        assert_eq!(frames[0].0, 0x4, "SETTINGS passes first and unchanged");
        assert_eq!(frames[0].3, settings()[9..]);
        let blocks = decode_blocks(&frames);
        assert_eq!(blocks.len(), 1);
        let headers = &blocks[0].1;
        assert_eq!(header(headers, ":authority"), Some("localhost"));
        assert_eq!(header(headers, ":path"), Some("/a/B"));
        assert_eq!(header(headers, ":method"), Some("POST"));
        assert_eq!(header(headers, "content-type"), Some("application/grpc"));
    }
}

#[test]
fn a_block_without_authority_gets_none() {
    let block = [vec![0x83, 0x86], literal(b":path", b"/x")].concat();
    let out = run(&connection(&[block])).unwrap();
    let blocks = decode_blocks(&parse_frames(&out[PREFACE.len()..]));
    assert_eq!(header(&blocks[0].1, ":authority"), None);
    assert_eq!(header(&blocks[0].1, ":path"), Some("/x"));
}

#[test]
fn an_authority_indexed_in_the_dynamic_table_is_rewritten_on_later_requests() {
    let first = request_block(b"/tmp/signet/agent.sock", b"/one");
    // The second request refers to the first one's authority by its
    // dynamic table index (62: the newest entry), as C-core does.
    let second = [vec![0x83, 0x86, 0x80 | 62], literal(b":path", b"/two")].concat();
    // A third shows the table is still in step: a custom header indexed,
    // then referred to, after the authority entry moved to 63.
    let mut third = vec![0x83, 0x86, 0x80 | 62, 0x40];
    for s in [&b"x-trace"[..], b"t1"] {
        loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut third).unwrap();
        third.extend_from_slice(s);
    }
    let fourth = vec![0x83, 0x86, 0x80 | 63, 0x80 | 62];
    let out = run(&connection(&[first, second, third, fourth])).unwrap();
    let blocks = decode_blocks(&parse_frames(&out[PREFACE.len()..]));
    let streams: Vec<u32> = blocks.iter().map(|(s, _)| *s).collect();
    assert_eq!(streams, [1, 3, 5, 7]);
    for (_, headers) in &blocks {
        assert_eq!(header(headers, ":authority"), Some("localhost"));
    }
    assert_eq!(header(&blocks[1].1, ":path"), Some("/two"));
    assert_eq!(header(&blocks[2].1, "x-trace"), Some("t1"));
    assert_eq!(header(&blocks[3].1, "x-trace"), Some("t1"));
}

#[test]
fn an_authority_split_across_continuation_frames_is_rewritten() {
    let block = request_block(b"%2Ftmp%2Fsignet%2Fagent.sock", b"/split");
    // Cut inside the authority's value and again a few bytes later.
    let at = 6;
    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_HEADERS, FLAG_END_STREAM, 1, &block[..at]));
    input.extend(frame(TYPE_CONTINUATION, 0, 1, &block[at..at + 5]));
    input.extend(frame(
        TYPE_CONTINUATION,
        FLAG_END_HEADERS,
        1,
        &block[at + 5..],
    ));
    let out = run(&input).unwrap();
    let frames = parse_frames(&out[PREFACE.len()..]);
    assert_eq!(frames.len(), 1, "a small block is re-framed as one HEADERS");
    assert_eq!(frames[0].1 & FLAG_END_STREAM, FLAG_END_STREAM);
    let blocks = decode_blocks(&frames);
    assert_eq!(header(&blocks[0].1, ":authority"), Some("localhost"));
    assert_eq!(header(&blocks[0].1, ":path"), Some("/split"));
}

#[test]
fn padding_is_dropped_and_priority_kept() {
    let block = request_block(b"/s.sock", b"/p");
    let mut payload = vec![3u8]; // pad length
    payload.extend([0x80, 0, 0, 1, 15]); // exclusive, depends on 1, weight 15
    payload.extend(&block);
    payload.extend([0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
        3,
        &payload,
    ));
    let out = run(&input).unwrap();
    let frames = parse_frames(&out[PREFACE.len()..]);
    assert_eq!(frames[0].1, FLAG_END_HEADERS | FLAG_PRIORITY);
    assert_eq!(frames[0].3[..5], [0x80, 0, 0, 1, 15]);
    let blocks = decode_blocks(&frames);
    assert_eq!(header(&blocks[0].1, ":authority"), Some("localhost"));
}

#[test]
fn a_large_block_is_split_into_frames_every_server_accepts() {
    let big = vec![b'v'; 40_000];
    let block = [request_block(b"/s.sock", b"/big"), literal(b"x-big", &big)].concat();
    let mut input = PREFACE.to_vec();
    let (a, rest) = block.split_at(16_000);
    let (b, c) = rest.split_at(16_000);
    input.extend(frame(TYPE_HEADERS, 0, 1, a));
    input.extend(frame(TYPE_CONTINUATION, 0, 1, b));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c));
    let out = run(&input).unwrap();
    let frames = parse_frames(&out[PREFACE.len()..]);
    assert!(frames.len() >= 3);
    assert!(frames.iter().all(|f| f.3.len() <= MAX_OUT_PAYLOAD));
    let blocks = decode_blocks(&frames);
    assert_eq!(header(&blocks[0].1, "x-big").unwrap().len(), 40_000);
    assert_eq!(header(&blocks[0].1, ":authority"), Some("localhost"));
}

#[test]
fn other_frames_pass_unchanged_and_any_read_split_gives_the_same_bytes() {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        1,
        &request_block(b"/s", b"/d"),
    ));
    let data = frame(0x0, 0x1, 1, &[0, 0, 0, 0, 5, 1, 2, 3, 4, 5]);
    let window = frame(0x8, 0, 0, &[0, 0, 0x10, 0]);
    let ping = frame(0x6, 0, 0, &[7; 8]);
    let unknown = frame(0xfa, 0x3, 9, b"extension");
    for f in [&data, &window, &ping, &unknown] {
        input.extend(f.iter());
    }
    let whole = run(&input).unwrap();
    let tail = [data, window, ping, unknown].concat();
    assert!(
        whole.ends_with(&tail),
        "non-header frames are forwarded byte for byte"
    );
    for step in [1, 2, 7, 9, 10, 24, 25, 100] {
        let cuts: Vec<usize> = (0..input.len()).step_by(step).collect();
        assert_eq!(
            run_in_pieces(&input, &cuts).unwrap(),
            whole,
            "cut every {step}"
        );
    }
}

#[test]
fn a_connection_without_the_preface_passes_unchanged() {
    let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(run(&http1).unwrap(), http1);
    // A prefix of the preface waits for more.
    assert!(run(&PREFACE[..10]).unwrap().is_empty());
}

#[test]
fn malformed_input_ends_the_connection() {
    let block = request_block(b"/s", b"/x");
    let with = |frames: Vec<u8>| [PREFACE.to_vec(), frames].concat();

    // A DATA frame inside an open header block.
    let bad = with(
        [
            frame(TYPE_HEADERS, 0, 1, &block[..4]),
            frame(0x0, 0, 1, b"data"),
        ]
        .concat(),
    );
    assert!(matches!(
        run(&bad),
        Err(FrameError::ExpectedContinuation { stream: 1, got: 0 })
    ));

    // A CONTINUATION of another stream.
    let bad = with(
        [
            frame(TYPE_HEADERS, 0, 1, &block[..4]),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &block[4..]),
        ]
        .concat(),
    );
    assert!(matches!(
        run(&bad),
        Err(FrameError::ExpectedContinuation { .. })
    ));

    // Padding longer than the payload.
    let bad = with(frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS | FLAG_PADDED,
        1,
        &[200, 0x82],
    ));
    assert!(matches!(
        run(&bad),
        Err(FrameError::BadPadding { stream: 1 })
    ));

    // An index beyond both tables.
    let bad = with(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70]));
    assert!(matches!(
        run(&bad),
        Err(FrameError::Hpack { stream: 1, .. })
    ));

    // A dynamic table larger than allowed.
    let mut resize = Vec::new();
    loona_hpack::encoder::encode_integer_into(MAX_TABLE_SIZE + 1, 5, 0x20, &mut resize).unwrap();
    resize.push(0x82);
    let bad = with(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &resize));
    assert!(matches!(run(&bad), Err(FrameError::Hpack { .. })));

    // A block larger than the cap, announced in one frame or grown by
    // CONTINUATIONs; refused before it is buffered.
    let mut header = frame(TYPE_HEADERS, 0, 1, &[]);
    let len = (MAX_BLOCK + 1) as u32;
    header[..3].copy_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
    assert!(matches!(
        run(&with(header)),
        Err(FrameError::BlockTooLarge { .. })
    ));
    let mut grow = frame(TYPE_HEADERS, 0, 1, &[0x82]);
    let chunk = vec![0x82; 16_384];
    for _ in 0..(MAX_BLOCK / chunk.len() + 1) {
        grow.extend(frame(TYPE_CONTINUATION, 0, 1, &chunk));
    }
    assert!(matches!(
        run(&with(grow)),
        Err(FrameError::BlockTooLarge { .. })
    ));

    // A small block that expands into a huge header list: one big header
    // indexed once, then referred to thousands of times.
    let mut bomb = vec![0x40];
    for s in [&b"x-bomb"[..], &[b'b'; 3_000][..]] {
        loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut bomb).unwrap();
        bomb.extend_from_slice(s);
    }
    bomb.extend(std::iter::repeat_n(0x80 | 62, 100));
    let bad = with(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &bomb));
    assert!(matches!(
        run(&bad),
        Err(FrameError::HeaderListTooLarge { stream: 1 })
    ));
}

#[tokio::test]
async fn a_connection_without_a_first_request_is_closed_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = std::time::Duration::from_millis(200);
    // Silent after connecting, or after the preface alone: closed.
    for sent in [&b""[..], PREFACE] {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(sent).await.unwrap();
        let mut conn = AuthorityRewrite::with_deadline(server, deadline);
        let mut buf = vec![0u8; 1024];
        let started = std::time::Instant::now();
        let err = loop {
            match conn.read(&mut buf).await {
                Ok(0) => panic!("end of stream instead of the deadline"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= deadline);
    }
    // A first request in time: the connection stays open past the deadline.
    let (mut client, server) = tokio::io::duplex(1 << 16);
    client
        .write_all(&connection(&[request_block(b"/s", b"/x")]))
        .await
        .unwrap();
    let mut conn = AuthorityRewrite::with_deadline(server, deadline);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1024];
    while got.len() < PREFACE.len() + 9 {
        let n = conn.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    let late = tokio::time::timeout(deadline * 3, conn.read(&mut buf)).await;
    match late {
        Err(_) => {}                 // still waiting for more: open
        Ok(Ok(n)) => assert!(n > 0), // the rest of the request
        Ok(Err(e)) => panic!("closed after its first request: {e}"),
    }
}

proptest! {
    /// Whatever a client sends after the preface, the rewriter returns a
    /// result or an error; it never panics.
    #[test]
    fn arbitrary_frames_never_panic(body in proptest::collection::vec(any::<u8>(), 0..4096),
                                    cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let input = [PREFACE.to_vec(), body].concat();
        let _ = run_in_pieces(&input, &cuts);
    }

    /// Well-framed header blocks with arbitrary HPACK bytes never panic
    /// either (the fuzz target goes further).
    #[test]
    fn arbitrary_header_blocks_never_panic(blocks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..256), 1..6)) {
        let mut input = PREFACE.to_vec();
        for (i, b) in blocks.iter().enumerate() {
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 2 * i as u32 + 1, b));
        }
        let _ = run(&input);
    }
}

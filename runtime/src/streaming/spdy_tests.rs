use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_one(bytes: &[u8]) -> Frame {
    let (frame, used) = Decoder::new()
        .decode(bytes)
        .unwrap()
        .expect("a whole frame");
    assert_eq!(used, bytes.len());
    frame
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new().encode(frame, &mut out).unwrap();
    out
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// Deflates `plain` as a peer's first header block (fresh stream, SPDY dictionary).
fn deflate_block(plain: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), true);
    c.set_dictionary(dictionary()).unwrap();
    let mut out = Vec::with_capacity(plain.len() + 128);
    c.compress_vec(plain, &mut out, FlushCompress::Sync)
        .unwrap();
    out
}

fn syn_reply_with_block(block: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80, 0x03, 0x00, 0x02, 0x00];
    frame.extend_from_slice(&((block.len() + 4) as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(&[0, 0, 0, 1]);
    frame.extend_from_slice(block);
    frame
}

#[test]
fn dictionary_is_the_spdy3_one() {
    // Its size and the Adler-32 that every SPDY/3 zlib header names (DICTID).
    assert_eq!(dictionary().len(), 1423);
    assert_eq!(adler32(dictionary()), 0xe3c6_a7c2);
}

#[test]
fn data_frame_layout() {
    let bytes = hex("00000001 01 000002 6869");
    let frame = Frame::Data {
        stream_id: 1,
        fin: true,
        data: b"hi".to_vec(),
    };
    assert_eq!(decode_one(&bytes), frame);
    assert_eq!(encode(&frame), bytes);
}

#[test]
fn fixed_control_frame_layouts() {
    let cases = [
        (
            hex("8003 0003 00 000008 00000005 00000005"),
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
        ),
        (hex("8003 0006 00 000004 00000007"), Frame::Ping { id: 7 }),
        (
            hex("8003 0007 00 000008 00000003 00000001"),
            Frame::GoAway {
                last_good_stream_id: 3,
                status: goaway::PROTOCOL_ERROR,
            },
        ),
        (
            hex("8003 0009 00 000008 00000003 00010000"),
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 0x10000,
            },
        ),
        (
            hex("8003 0004 00 00000c 00000001 00 000007 00400000"),
            Frame::Settings {
                clear: false,
                entries: vec![Setting {
                    flags: 0,
                    id: settings::INITIAL_WINDOW_SIZE,
                    value: 4 << 20,
                }],
            },
        ),
    ];
    for (bytes, frame) in cases {
        assert_eq!(decode_one(&bytes), frame);
        assert_eq!(encode(&frame), bytes, "{frame:?}");
    }
}

#[test]
fn reserved_bits_of_ids_are_ignored() {
    let frame = decode_one(&hex("8003 0003 00 000008 80000005 00000001"));
    assert_eq!(
        frame,
        Frame::RstStream {
            stream_id: 5,
            status: 1
        }
    );
}

#[test]
fn syn_stream_made_by_another_implementation() {
    // A SYN_STREAM (stream 1, priority 4) as Chromium's framer compresses it, with a
    // 2 KiB zlib window: headers bar=foo and foo=bar.
    let bytes = hex(
        "80030001 00000037 00000001 00000000 8000 38eae3c6a7c202e50e50c24b4a04\
                     e50b6680004acbcf07082010 95969f0fa200022829b10820 8000000000ffff",
    );
    let Frame::SynStream {
        stream_id,
        associated_id,
        priority,
        fin,
        unidirectional,
        headers,
    } = decode_one(&bytes)
    else {
        panic!("not a SYN_STREAM");
    };
    assert_eq!((stream_id, associated_id, priority), (1, 0, 4));
    assert!(!fin && !unidirectional);
    let want: Headers = [("bar", "foo"), ("foo", "bar")].into_iter().collect();
    assert_eq!(headers, want);
}

#[test]
fn header_blocks_share_one_zlib_stream_per_direction() {
    // node-spdy's SYN_STREAM then a second block on the same stream: the second is only
    // readable with the first one's compression state.
    let first = hex(
        "800300010000002c0000000100000000000078f9e3c6a7c202e50e507ab442a45a\
                     77d7105006b32a4804974d8cfa00000000ffff",
    );
    let mut dec = Decoder::new();
    let (frame, _) = dec.decode(&first).unwrap().unwrap();
    let Frame::SynStream { headers, .. } = frame else {
        panic!("not a SYN_STREAM");
    };
    assert_eq!(headers.get(":method"), Some("GET"));
    assert_eq!(headers.get(":path"), Some("/"));

    let mut enc = Encoder::new();
    let mut dec = Decoder::new();
    let mut wire = Vec::new();
    let frames: Vec<Frame> = (1..=3)
        .map(|i| Frame::Headers {
            stream_id: i,
            fin: i == 3,
            headers: [("streamtype", "stdout"), ("x-n", &i.to_string())]
                .into_iter()
                .collect(),
        })
        .collect();
    for f in &frames {
        enc.encode(f, &mut wire).unwrap();
    }
    let mut at = 0;
    for f in &frames {
        let (got, n) = dec.decode(&wire[at..]).unwrap().unwrap();
        assert_eq!(&got, f);
        at += n;
    }
    assert_eq!(at, wire.len());
    // A fresh decoder cannot read the second block on its own.
    let first_len = 8 + u32::from_be_bytes([0, wire[5], wire[6], wire[7]]) as usize;
    assert!(Decoder::new().decode(&wire[first_len..]).is_err());
}

#[test]
fn our_header_blocks_name_the_dictionary() {
    let bytes = encode(&Frame::SynReply {
        stream_id: 1,
        fin: false,
        headers: Headers::new(),
    });
    // zlib header: FDICT (bit 5 of the flag byte) and the dictionary's Adler-32.
    assert_eq!(bytes[12], 0x78);
    assert_ne!(bytes[13] & 0x20, 0);
    assert_eq!(bytes[14..18], 0xe3c6_a7c2u32.to_be_bytes());
    assert_eq!(bytes[4], 0, "no flags");
}

#[test]
fn every_frame_round_trips() {
    let headers: Headers = [
        ("streamType", "error"),
        ("port", "80"),
        ("x-multi", "a"),
        ("x-multi", "b"),
    ]
    .into_iter()
    .collect();
    let frames = vec![
        Frame::SynStream {
            stream_id: 3,
            associated_id: 1,
            priority: 7,
            fin: true,
            unidirectional: true,
            headers: headers.clone(),
        },
        Frame::SynReply {
            stream_id: 3,
            fin: true,
            headers: Headers::new(),
        },
        Frame::Headers {
            stream_id: 3,
            fin: false,
            headers,
        },
        Frame::RstStream {
            stream_id: 0x7fff_ffff,
            status: rst::FLOW_CONTROL_ERROR,
        },
        Frame::Settings {
            clear: true,
            entries: vec![
                Setting {
                    flags: 1,
                    id: settings::MAX_CONCURRENT_STREAMS,
                    value: 100,
                },
                Setting {
                    flags: 2,
                    id: 0xabcdef,
                    value: u32::MAX,
                },
            ],
        },
        Frame::Ping { id: u32::MAX },
        Frame::GoAway {
            last_good_stream_id: 9,
            status: goaway::OK,
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 0x7fff_ffff,
        },
        Frame::Data {
            stream_id: 8,
            fin: false,
            data: vec![7; 70_000],
        },
        Frame::Data {
            stream_id: 8,
            fin: true,
            data: Vec::new(),
        },
    ];
    let mut enc = Encoder::new();
    let mut wire = Vec::new();
    for f in &frames {
        enc.encode(f, &mut wire).unwrap();
    }
    let mut dec = Decoder::new();
    let mut at = 0;
    for f in &frames {
        let (got, n) = dec.decode(&wire[at..]).unwrap().unwrap();
        assert_eq!(&got, f);
        at += n;
    }
    assert_eq!(at, wire.len());
}

#[test]
fn headers_type() {
    let mut h = Headers::new();
    h.add("StreamType", "stdin");
    h.add("x-a", "1");
    h.add("X-A", "2");
    assert_eq!(h.get("streamtype"), Some("stdin"));
    assert_eq!(h.get("STREAMTYPE"), Some("stdin"));
    assert_eq!(h.get_all("x-a").collect::<Vec<_>>(), ["1", "2"]);
    assert_eq!(h.get("missing"), None);
    let names: Vec<_> = h.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["streamtype", "x-a", "x-a"]);
}

#[test]
fn every_truncation_asks_for_more() {
    let mut enc = Encoder::new();
    let mut wire = Vec::new();
    let frame = Frame::SynStream {
        stream_id: 1,
        associated_id: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: [("streamtype", "stdout")].into_iter().collect(),
    };
    enc.encode(&frame, &mut wire).unwrap();
    let mut dec = Decoder::new();
    for cut in 0..wire.len() {
        assert!(dec.decode(&wire[..cut]).unwrap().is_none(), "cut at {cut}");
    }
    // The prefixes left the header decompressor untouched.
    assert_eq!(dec.decode(&wire).unwrap().unwrap().0, frame);
}

#[test]
fn oversized_frames_are_refused_from_their_header() {
    let mut dec = Decoder::with_limits(1024, DEFAULT_MAX_HEADER_BLOCK);
    let err = dec.decode(&hex("00000001 00 000401")).unwrap_err();
    assert!(
        matches!(
            err,
            FrameError::TooLarge {
                len: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    assert!(dec.decode(&hex("00000001 00 000400")).unwrap().is_none());
    let err = Decoder::new()
        .decode(&hex("80030001 00 ffffff"))
        .unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
}

#[test]
fn other_versions_are_refused() {
    let err = Decoder::new()
        .decode(&hex("8002 0006 00 000004 00000001"))
        .unwrap_err();
    assert!(matches!(err, FrameError::Version(2)), "{err}");
}

#[test]
fn malformed_fixed_frames_are_refused() {
    let cases = [
        hex("8003 0003 00 000004 00000001"), // RST_STREAM too short
        hex("8003 0006 00 000008 00000001 00000000"), // PING too long
        hex("8003 0004 00 00000c 00000002 00000007 00000001"), // SETTINGS count
        hex("8003 0001 00 000002 0000"),     // SYN_STREAM too short
        hex("8003 0009 00 000008 00000001 00000000"), // zero window delta
        hex("00000000 00 000000"),           // data on stream 0
        hex("8003 0003 00 000008 00000000 00000001"), // RST_STREAM stream 0
    ];
    for bytes in cases {
        assert!(Decoder::new().decode(&bytes).is_err(), "{bytes:02x?}");
    }
}

#[test]
fn unknown_control_types_are_skipped() {
    let bytes = hex("8003 000a 00 000003 010203 00000001 00 000000");
    let mut dec = Decoder::new();
    let (frame, n) = dec.decode(&bytes).unwrap().unwrap();
    assert_eq!(frame, Frame::Unknown { frame_type: 10 });
    assert_eq!(n, 11);
    assert!(matches!(
        dec.decode(&bytes[n..]).unwrap().unwrap().0,
        Frame::Data { stream_id: 1, .. }
    ));
}

#[test]
fn bad_header_blocks_are_refused() {
    // Not zlib at all.
    let err = Decoder::new()
        .decode(&syn_reply_with_block(b"not a zlib stream"))
        .unwrap_err();
    assert!(matches!(err, FrameError::Inflate(_)), "{err}");

    let pair = |name: &str, value: &str| {
        let mut b = Vec::new();
        for part in [name, value] {
            b.extend_from_slice(&(part.len() as u32).to_be_bytes());
            b.extend_from_slice(part.as_bytes());
        }
        b
    };
    let block = |count: u32, pairs: &[Vec<u8>]| {
        let mut b = count.to_be_bytes().to_vec();
        for p in pairs {
            b.extend_from_slice(p);
        }
        b
    };
    let cases = [
        ("count beyond the pairs", block(5, &[pair("a", "b")])),
        ("duplicate", block(2, &[pair("a", "b"), pair("a", "c")])),
        ("empty name", block(1, &[pair("", "x")])),
        (
            "trailing bytes",
            [block(1, &[pair("a", "b")]), vec![0]].concat(),
        ),
        ("length beyond", block(1, &[vec![0, 0, 0, 200, b'a']])),
        ("no count", vec![0, 0]),
    ];
    for (what, plain) in cases {
        let err = Decoder::new()
            .decode(&syn_reply_with_block(&deflate_block(&plain)))
            .unwrap_err();
        assert!(
            matches!(err, FrameError::BadHeaderBlock(_)),
            "{what}: {err}"
        );
    }
    // The same framing with a good block decodes.
    let good = block(1, &[pair("a", "b")]);
    let frame = decode_one(&syn_reply_with_block(&deflate_block(&good)));
    assert!(matches!(frame, Frame::SynReply { headers, .. } if headers.get("a") == Some("b")));
}

#[test]
fn decompression_bombs_are_refused() {
    // 10 MiB of one value compresses to a few KiB.
    let mut plain = 1u32.to_be_bytes().to_vec();
    plain.extend_from_slice(&1u32.to_be_bytes());
    plain.push(b'a');
    plain.extend_from_slice(&(10u32 << 20).to_be_bytes());
    plain.resize(plain.len() + (10 << 20), b'x');
    let compressed = deflate_block(&plain);
    assert!(compressed.len() < 64 << 10);
    let err = Decoder::new()
        .decode(&syn_reply_with_block(&compressed))
        .unwrap_err();
    assert!(
        matches!(err, FrameError::HeaderBlockTooLarge { .. }),
        "{err}"
    );
}

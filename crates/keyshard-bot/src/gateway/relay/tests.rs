//! Unit tests of `gateway::relay`: how frames are read.

use super::*;

#[test]
fn client_frames_name_their_shard_or_session_and_nothing_else_is_kept() {
    let identify = r#"{"op":2,"d":{"token":"secret","shard":[3,4],"intents":0}}"#;
    let f = client_frame(identify).unwrap();
    assert_eq!((f.op, f.shard, f.session_id), (2, Some(3), None));
    let resume = r#"{"op":6,"d":{"token":"secret","session_id":"abc","seq":7}}"#;
    let f = client_frame(resume).unwrap();
    assert_eq!(
        (f.op, f.shard, f.session_id.as_deref()),
        (6, None, Some("abc"))
    );
    assert_eq!(client_frame(r#"{"op":1,"d":12}"#).unwrap().op, 1);
    assert!(client_frame("not json").is_none());
}

#[test]
fn only_small_server_frames_are_parsed() {
    let op9 = Message::Text(r#"{"op":9,"d":false,"s":null,"t":null}"#.into());
    assert_eq!(server_op(&op9), Some(9));
    let big = Message::Text(format!(r#"{{"op":0,"d":"{}"}}"#, "x".repeat(PEEK_LIMIT)));
    assert_eq!(server_op(&big), None);
    assert_eq!(server_op(&Message::Binary(vec![0x78, 0x9c])), None);
}

//! The stream, KV and object-store pieces against real nats-server processes (one server,
//! and a three-node cluster with R3): fencing by expected sequence, de-duplication, leader
//! compare-and-set (one winner of a race), base round trip, purge, consumer start, gap.

use snapheap_nats::frame;
use snapheap_nats::testing::{NatsCluster, NatsServer};
use snapheap_nats::transport::{ack, BaseInfo, Conn, Leader, PublishFailure};
use snapheap_nats::NatsConfig;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cfg(url: &str, replicas: usize) -> NatsConfig {
    let mut c = NatsConfig::new(url, "t", "n1");
    c.replicas = replicas;
    c.request_timeout = Duration::from_secs(5);
    c
}

async fn publish(c: &Conn, id: &str, expected: u64, body: &[u8]) -> Result<(u64, bool), PublishFailure> {
    let f = c.publish(id, expected, body.to_vec()).await?;
    ack(f).await.map(|a| (a.seq, a.duplicate))
}

#[test]
fn expected_sequence_fences_a_stale_writer_and_msg_ids_deduplicate() {
    let s = NatsServer::start();
    rt().block_on(async {
        let c = Conn::open(&cfg(&s.url(), 1)).await.unwrap();
        assert_eq!(c.tail().await.unwrap(), None);
        assert_eq!(publish(&c, "a", 0, b"one").await.unwrap(), (1, false));
        assert_eq!(publish(&c, "b", 1, b"two").await.unwrap(), (2, false));
        // A writer that still believes the last message is 1 is refused (error 10071).
        match publish(&c, "c", 1, b"stale").await {
            Err(PublishFailure::WrongLastSequence(_)) => {}
            other => panic!("stale writer not fenced: {other:?}"),
        }
        // So is one that believes the subject is empty.
        assert!(matches!(
            publish(&c, "c", 0, b"stale").await,
            Err(PublishFailure::WrongLastSequence(_))
        ));
        // A retry of a stored message with the correct expectation is a duplicate.
        assert_eq!(publish(&c, "b", 2, b"two").await.unwrap(), (2, true));
        // A retry whose expectation is the one it was first sent with (its ack was lost):
        // the server answers either "duplicate" or 10071; the shipper handles both by
        // reading the tail.
        match publish(&c, "b", 1, b"two").await {
            Ok((2, true)) | Err(PublishFailure::WrongLastSequence(_)) => {}
            other => panic!("lost-ack retry: {other:?}"),
        }
        assert_eq!(c.tail().await.unwrap(), Some((2, b"two".to_vec())));
        assert_eq!(c.bounds().await.unwrap(), (1, 2));
    });
}

#[test]
fn leader_key_compare_and_set_has_one_winner() {
    let s = NatsServer::start();
    rt().block_on(async {
        let a = Conn::open(&cfg(&s.url(), 1)).await.unwrap();
        let b = Conn::open(&cfg(&s.url(), 1)).await.unwrap();
        assert_eq!(a.leader().await.unwrap(), None);
        let l1 = Leader {
            epoch: 1,
            node: "a".into(),
        };
        assert!(a.cas_leader(&l1, 0).await.unwrap());
        assert!(!b
            .cas_leader(
                &Leader {
                    epoch: 1,
                    node: "b".into()
                },
                0
            )
            .await
            .unwrap());
        let (got, rev) = b.leader().await.unwrap().unwrap();
        assert_eq!(got, l1);
        // Two candidates race from the same revision: exactly one wins.
        let la = Leader {
            epoch: 2,
            node: "a".into(),
        };
        let lb = Leader {
            epoch: 2,
            node: "b".into(),
        };
        let (ra, rb) = tokio::join!(a.cas_leader(&la, rev), b.cas_leader(&lb, rev));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(ra ^ rb, "winners: a {ra}, b {rb}");
        let (now, _) = a.leader().await.unwrap().unwrap();
        assert_eq!(now, if ra { la } else { lb });
    });
}

#[test]
fn base_object_round_trips_and_is_replaced() {
    let s = NatsServer::start();
    rt().block_on(async {
        let c = Conn::open(&cfg(&s.url(), 1)).await.unwrap();
        assert!(c.get_base().await.unwrap().is_none());
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let i1 = BaseInfo {
            heap_id: 5,
            seq: 10,
            epoch: 1,
            start: 1,
        };
        c.put_base(&i1, &big).await.unwrap();
        let (gi, gb) = c.get_base().await.unwrap().unwrap();
        assert_eq!(gi, i1);
        assert!(gb == big, "base bytes differ");
        let i2 = BaseInfo {
            heap_id: 5,
            seq: 20,
            epoch: 1,
            start: 30,
        };
        c.put_base(&i2, b"small").await.unwrap();
        let (gi, gb) = c.get_base().await.unwrap().unwrap();
        assert_eq!((gi, gb.as_slice()), (i2, &b"small"[..]));
    });
}

#[test]
fn consumer_starts_where_asked_and_silently_skips_purged_messages() {
    let s = NatsServer::start();
    rt().block_on(async {
        let c = Conn::open(&cfg(&s.url(), 1)).await.unwrap();
        for i in 1..=10u64 {
            publish(&c, &format!("m{i}"), i - 1, &i.to_le_bytes()).await.unwrap();
        }
        let mut m = c.messages_from(4).await.unwrap();
        let (seq, body) = snapheap_nats::transport::next_message(&mut m).await.unwrap();
        assert_eq!((seq, body), (4, 4u64.to_le_bytes().to_vec()));
        drop(m);
        assert_eq!(c.purge_below(7).await.unwrap(), 6);
        assert_eq!(c.bounds().await.unwrap(), (7, 10));
        // Asked for 4 (purged), the server starts at the first retained message: the gap is
        // visible only in the payload's own numbering, which followers check.
        let mut m = c.messages_from(4).await.unwrap();
        let (seq, _) = snapheap_nats::transport::next_message(&mut m).await.unwrap();
        assert_eq!(seq, 7);
    });
}

#[test]
fn a_three_node_cluster_keeps_an_r3_log_writable_after_losing_a_node() {
    let mut cl = NatsCluster::start();
    let url = cl.urls();
    let r = rt();
    let c = r.block_on(async {
        let mut tries = 0;
        loop {
            // The meta leader may still be settling right after start.
            match Conn::open(&cfg(&url, 3)).await {
                Ok(c) => break c,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    r.block_on(async {
        let (h, f) = frame::split(1, 1, 1, b"group one", 1000).remove(0);
        publish(&c, &frame::msg_id(&h), 0, &f).await.unwrap();
    });
    cl.nodes[2].kill();
    r.block_on(async {
        let (h, f) = frame::split(1, 1, 2, b"group two", 1000).remove(0);
        let mut last = None;
        for _ in 0..50 {
            match publish(&c, &frame::msg_id(&h), 1, &f).await {
                Ok(a) => {
                    last = Some(a);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        assert_eq!(last.map(|a| a.0), Some(2), "R3 log not writable with 2 of 3 nodes");
        let (seq, body) = c.tail().await.unwrap().unwrap();
        assert_eq!(seq, 2);
        assert_eq!(frame::decode(&body).unwrap().payload, b"group two");
    });
}

//! The test kit's etcd cluster (`harness::etcd`), which the etcd source's
//! and `portcullis publish`'s tests stand on: three real members on
//! loopback that keep serving reads and writes when the leader dies, and
//! a member that catches up when it comes back.

use portcullis_test_kit::harness::etcd::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_the_leader_and_a_restarted_member_catches_up() {
    let mut cluster = EtcdCluster::start(3).await;
    assert_eq!(cluster.endpoints().len(), 3);
    let written = cluster.put("/t/a", "1").await;
    assert_eq!(cluster.get("/t/a").await, Some((b"1".to_vec(), written)));

    // The client every test uses, balanced over all members, sees it too.
    let mut client = cluster.client().await;
    let got = client
        .get("/t/a", None)
        .await
        .expect("get through client()");
    assert_eq!(got.kvs()[0].value(), b"1");

    let leader = cluster.leader().await;
    cluster.kill(leader).await;
    assert_eq!(cluster.get("/t/a").await, Some((b"1".to_vec(), written)));
    let after = cluster.put("/t/b", "2").await;
    assert!(after > written, "revision {after} after {written}");
    assert_ne!(cluster.leader().await, leader, "a new leader is elected");
    cluster.delete("/t/a").await;
    assert_eq!(cluster.get("/t/a").await, None);

    // Back on its ports and data: it learns what it missed.
    cluster.restart(leader).await;
    let only_it = cluster.endpoint(leader);
    let mut client = etcd_client::Client::connect([only_it], None)
        .await
        .expect("client of the restarted member");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get("/t/b", None).await
            && r.kvs().first().map(|kv| kv.value()) == Some(b"2".as_slice())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restarted member did not catch up:\n{}",
            cluster.log(leader)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_restarts_whole_with_its_data_and_compacts() {
    let mut cluster = EtcdCluster::start(1).await;
    assert_eq!(cluster.leader().await, 0);
    let first = cluster.put("/t/k", "v1").await;
    let second = cluster.put("/t/k", "v2").await;
    cluster.kill_all().await;
    cluster.restart_all().await;
    assert_eq!(cluster.get("/t/k").await, Some((b"v2".to_vec(), second)));
    assert_eq!(cluster.revision().await, second);

    cluster.compact(second).await;
    let mut client = cluster.client().await;
    let old = etcd_client::GetOptions::new().with_revision(first);
    let refused = client.get("/t/k", Some(old)).await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("compacted")),
        "a read before the compaction is refused"
    );
}

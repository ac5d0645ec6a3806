use super::*;

#[test]
fn fill_take_recycle_keeps_ownership() {
    let mut ring = BufRing::new(5, 4096).unwrap();
    assert_eq!(ring.mask, 7);
    assert_eq!(ring.in_ring(), 5);
    assert_eq!(ring.take(3), Ok(()));
    assert_eq!(ring.in_ring(), 4);
    ring.recycle(3);
    ring.publish();
    assert_eq!(ring.in_ring(), 5);
    assert_eq!(ring.addr(1) as usize - ring.addr(0) as usize, 4096);
    // Many round trips through every slot of the ring (the tail wraps around it).
    for round in 0..100u16 {
        let bid = round % 5;
        ring.take(bid).unwrap();
        ring.recycle(bid);
    }
    ring.publish();
    assert_eq!(ring.in_ring(), 5);
    assert_eq!(
        ring.bytes_to_leak(),
        0,
        "never registered: unmapped on drop"
    );
}

#[test]
fn take_run_follows_the_ring_order_and_checks_it() {
    let mut ring = BufRing::new(4, 64).unwrap();
    // The ring holds 0, 1, 2, 3 in that order.
    assert_eq!(
        ring.take_run(1, 1),
        Err(TakeError::OutOfOrder {
            expected: 0,
            got: 1
        })
    );
    assert_eq!(ring.take_run(0, 5), Err(TakeError::BeyondTail(5)));
    assert_eq!(ring.in_ring(), 4, "a refused run takes nothing");
    let start = ring.take_run(0, 3).unwrap();
    assert_eq!(
        (0..3).map(|i| ring.bid_at(start + i)).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(ring.in_ring(), 1);
    // Back in another order: the ring now holds 3, 2, 0 (1 still held).
    ring.recycle(2);
    ring.recycle(0);
    assert_eq!(
        ring.take_run(3, 3),
        Err(TakeError::BeyondTail(3)),
        "not published yet"
    );
    ring.publish();
    let start = ring.take_run(3, 3).unwrap();
    assert_eq!(
        (0..3).map(|i| ring.bid_at(start + i)).collect::<Vec<_>>(),
        [3, 2, 0]
    );
    // Many wraps of the 4-slot ring, one and two buffers at a time.
    ring.recycle(3);
    ring.recycle(2);
    ring.recycle(0);
    ring.recycle(1);
    ring.publish();
    for round in 0..100u16 {
        let n = 1 + round % 2;
        let first = ring.bid_at(ring.head);
        let start = ring.take_run(first, n).unwrap();
        let bids: Vec<u16> = (0..n).map(|i| ring.bid_at(start + i)).collect();
        for bid in bids {
            assert_eq!(ring.take(bid), Err(TakeError::NotInRing(bid)));
            ring.recycle(bid);
        }
        ring.publish();
    }
    assert_eq!(ring.in_ring(), 4);
}

#[test]
fn take_refuses_an_id_outside_the_pool() {
    let mut ring = BufRing::new(5, 64).unwrap();
    assert_eq!(ring.take(9), Err(TakeError::Unknown(9)));
    assert_eq!(ring.in_ring(), 5);
}

#[test]
fn take_refuses_an_id_already_held() {
    let mut ring = BufRing::new(70, 64).unwrap();
    ring.take(65).unwrap();
    assert_eq!(ring.take(65), Err(TakeError::NotInRing(65)));
    assert_eq!(ring.in_ring(), 69);
    // Neighbours in the same bitset word are unaffected.
    ring.take(64).unwrap();
    ring.take(66).unwrap();
}

#[test]
#[should_panic(expected = "recycled while already in the ring")]
fn double_recycle_panics() {
    let mut ring = BufRing::new(4, 64).unwrap();
    ring.take(2).unwrap();
    ring.recycle(2);
    ring.recycle(2);
}

#[test]
#[should_panic(expected = "recycled while already in the ring")]
fn recycle_of_an_id_never_taken_panics() {
    let mut ring = BufRing::new(4, 64).unwrap();
    ring.recycle(1);
}

#[test]
#[should_panic(expected = "pool has only 4 buffers")]
fn recycle_outside_the_pool_panics() {
    let mut ring = BufRing::new(4, 64).unwrap();
    ring.recycle(4);
}

#[test]
#[should_panic(expected = "outside the pool")]
fn addr_outside_the_pool_panics() {
    let ring = BufRing::new(4, 64).unwrap();
    let _ = ring.addr(4);
}

fn incremental(count: usize, buf_size: usize) -> BufRing {
    let mut ring = BufRing::new(count, buf_size).unwrap();
    ring.enable_incremental();
    ring
}

#[test]
fn incremental_buffer_returns_only_after_the_kernel_and_its_last_slice() {
    let mut ring = incremental(4, 1000);
    // Three receives (of any connections) share buffer 0; the kernel keeps using it.
    assert_eq!(ring.take_slice(0, 100, true), Ok(0));
    assert_eq!(ring.take_slice(0, 200, true), Ok(100));
    assert_eq!(ring.take_slice(0, 300, true), Ok(300));
    assert_eq!(ring.in_ring(), 3, "held from its first slice");
    // Every slice sent: still the kernel's (its descriptor is at the ring head).
    ring.put(0);
    ring.put(0);
    ring.put(0);
    assert_eq!(ring.in_ring(), 3);
    // The kernel fills the rest and is done; back once that last slice is sent too.
    assert_eq!(ring.take_slice(0, 400, false), Ok(600));
    assert_eq!(ring.in_ring(), 3);
    ring.put(0);
    assert_eq!(ring.in_ring(), 4);

    // The other order: three slices, the kernel done with the third, sends after.
    assert_eq!(ring.take_slice(1, 10, true), Ok(0));
    assert_eq!(ring.take_slice(1, 20, true), Ok(10));
    assert_eq!(
        ring.take_slice(1, 30, false),
        Ok(30),
        "done early (a short buffer)"
    );
    assert_eq!(
        ring.take_slice(1, 5, true),
        Err(TakeError::KernelDone(1)),
        "the kernel cannot be using a buffer it finished"
    );
    ring.put(1);
    ring.put(1);
    assert_eq!(ring.in_ring(), 3, "one slice still outstanding");
    ring.put(1);
    assert_eq!(ring.in_ring(), 4);
    ring.publish();
    // Recycled, it starts afresh at offset 0.
    assert_eq!(ring.take_slice(1, 1000, false), Ok(0));
    ring.put(1);
    assert_eq!(ring.in_ring(), 4);
}

#[test]
fn incremental_refusals_change_nothing_or_poison_the_buffer() {
    let mut ring = incremental(4, 1000);
    assert_eq!(ring.take_slice(9, 1, true), Err(TakeError::Unknown(9)));
    assert_eq!(ring.in_ring(), 4, "nothing changed");
    assert_eq!(ring.take_slice(1, 600, true), Ok(0));
    assert_eq!(
        ring.take_slice(1, 401, true),
        Err(TakeError::BeyondBuffer { bid: 1, end: 1001 })
    );
    // Our offset no longer matches the kernel's: no more slices of it, and it never goes
    // back while the kernel may write into it.
    assert_eq!(ring.take_slice(1, 10, false), Err(TakeError::Poisoned(1)));
    ring.put(1);
    assert_eq!(ring.in_ring(), 3);
    // A first slice that does not fit, and BUF_MORE on a full buffer, poison too.
    assert_eq!(
        ring.take_slice(2, 1001, false),
        Err(TakeError::BeyondBuffer { bid: 2, end: 1001 })
    );
    assert_eq!(
        ring.take_slice(3, 1000, true),
        Err(TakeError::BeyondBuffer { bid: 3, end: 1000 }),
        "BUF_MORE on a full buffer"
    );
    assert_eq!(ring.in_ring(), 1);
    assert_eq!(ring.kernel_partial(), 3);
    // Once the group is unregistered the kernel cannot write into them: all come back.
    ring.reclaim_partial();
    assert_eq!((ring.in_ring(), ring.kernel_partial()), (4, 0));
    ring.publish();
    assert_eq!(ring.take_slice(2, 10, true), Ok(0), "a fresh start");
}

#[test]
fn reclaim_returns_partly_consumed_buffers_without_slices() {
    let mut ring = incremental(4, 1000);
    ring.take_slice(3, 10, true).unwrap();
    ring.take_slice(3, 10, true).unwrap();
    ring.put(3);
    assert_eq!(ring.kernel_partial(), 0);
    ring.take_slice(0, 10, true).unwrap();
    ring.put(0);
    assert_eq!(
        ring.kernel_partial(),
        1,
        "buffer 0: only the kernel uses it"
    );
    ring.reclaim_partial();
    assert_eq!(ring.kernel_partial(), 0);
    assert_eq!(ring.in_ring(), 3, "buffer 3: a slice is still outstanding");
    ring.put(3);
    assert_eq!(ring.in_ring(), 4, "reclaimed: the kernel is done with both");
    // Plain rings have nothing to reclaim.
    let mut plain = BufRing::new(2, 64).unwrap();
    plain.take(0).unwrap();
    plain.reclaim_partial();
    assert_eq!(plain.in_ring(), 1);
}

#[test]
#[should_panic(expected = "none is outstanding")]
fn putting_back_a_slice_never_taken_panics() {
    let mut ring = incremental(4, 1000);
    ring.take_slice(0, 10, true).unwrap();
    ring.put(0);
    ring.put(0);
}

#[test]
#[should_panic(expected = "does not hold that buffer")]
fn putting_back_a_slice_of_a_buffer_in_the_ring_panics() {
    let mut ring = incremental(4, 1000);
    ring.put(1);
}

#[test]
#[should_panic(expected = "bundled run taken from an incremental ring")]
fn bundles_are_refused_on_an_incremental_ring() {
    let mut ring = incremental(4, 1000);
    let _ = ring.take_run(0, 1);
}

#[test]
fn registered_memory_is_leaked_unless_released() {
    let mut ring = BufRing::new(4, 4096).unwrap();
    ring.kernel_may_use = true; // as `register` does
    assert_eq!(ring.bytes_to_leak(), 4 * 16 + 4 * 4096);
    ring.release();
    assert_eq!(ring.bytes_to_leak(), 0);
}

#[test]
fn rejects_bad_sizes() {
    assert!(BufRing::new(0, 4096).is_err());
    assert!(BufRing::new(MAX_BUFFERS + 1, 4096).is_err());
    assert!(BufRing::new(4, 0).is_err());
}

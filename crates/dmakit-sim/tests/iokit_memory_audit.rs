//! Behaviours of the memory side (descriptors, mappings) checked against IOKit's: each test
//! states what XNU's IOKit does and asserts that dmakit does the same.

use dmakit::descriptor::{GeneralMemoryDescriptor, MemoryDescriptor, SubMemoryDescriptor};
use dmakit::{Direction, Error};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

const PAGE: u64 = 4096;

fn machine() -> Arc<Machine> {
    Arc::new(MachineBuilder::new().seed(0x10_4D17).build().unwrap())
}

/// IOSubMemoryDescriptor::prepare(forDirection) hands `forDirection` to its parent as it
/// is, so `prepare(kIODirectionNone)` wires the parent for the *parent's* direction.
#[test]
fn sub_prepare_without_direction_uses_the_parents_direction() {
    let m = machine();
    let task = m.create_task();
    let va = m.vm_allocate(task, 2 * PAGE, true).unwrap();
    let parent: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(
            m.clone(),
            task,
            va,
            2 * PAGE,
            Direction::InOut,
        )
        .unwrap(),
    );
    let window = SubMemoryDescriptor::new(parent.clone(), PAGE, PAGE, Direction::Out).unwrap();
    window.prepare_wiring(Direction::None).unwrap();
    // Wired read-write (the parent's InOut), not read-only (the window's Out).
    assert_eq!(parent.write_bytes(0, b"writable"), 8);
    parent.prepare_wiring(Direction::In).unwrap();
    parent.complete().unwrap();
    window.complete().unwrap();

    // An explicit direction still reaches the parent: Out wires it read-only.
    window.prepare_wiring(Direction::Out).unwrap();
    assert_eq!(parent.write_bytes(0, b"x"), 0, "prepared read-only");
    assert!(matches!(
        parent.prepare_wiring(Direction::In),
        Err(Error::NotWritable { .. })
    ));
    window.complete().unwrap();
}

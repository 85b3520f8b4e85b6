//! Kernel programs of Hitcount. One module per event family; every map is
//! declared in `maps.rs`. Programs pre-aggregate into hash maps that the agent
//! drains; nothing here logs per event.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod kernel;
mod maps;
mod net;
mod pam;
mod process;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never linked in.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! Off Apple platforms the crate builds, and every constructor says plainly
//! that Metal is not there.

#![cfg(not(target_vendor = "apple"))]

use alloc_mps::{METAL_BUILT, MetalAllocator, MetalBackend, MetalError};

#[test]
fn constructors_say_metal_is_apple_only() {
    const { assert!(!METAL_BUILT) };
    for err in [
        MetalBackend::system_default().err(),
        MetalBackend::new(0).err(),
        MetalAllocator::new().err(),
        MetalAllocator::global().err(),
    ] {
        let err = err.expect("no Metal here");
        assert!(matches!(err, MetalError::Unsupported { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("only available on Apple platforms")
                && text.contains(std::env::consts::OS),
            "{text}"
        );
    }
}

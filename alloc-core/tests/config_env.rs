//! `Config::from_env` reads `ALLOC_CONF`, else PyTorch's
//! `PYTORCH_CUDA_ALLOC_CONF`, else `PYTORCH_ALLOC_CONF`. The only test of this
//! binary, so nothing else reads the environment meanwhile.

use alloc_core::config::{Config, ConfigError};

fn set(var: &str, value: Option<&str>) {
    // SAFETY: this binary's only test runs on one thread and no other thread
    // reads or writes the environment.
    unsafe {
        match value {
            Some(v) => std::env::set_var(var, v),
            None => std::env::remove_var(var),
        }
    }
}

#[test]
fn from_env_falls_back_to_pytorch_s_variables() {
    set("ALLOC_CONF", None);
    set("PYTORCH_CUDA_ALLOC_CONF", None);
    set("PYTORCH_ALLOC_CONF", None);
    assert_eq!(Config::from_env().unwrap(), Config::default());

    set("PYTORCH_ALLOC_CONF", Some("max_split_size_mb:64"));
    assert_eq!(Config::from_env().unwrap().max_split_size, 64 << 20);

    set(
        "PYTORCH_CUDA_ALLOC_CONF",
        Some("expandable_segments:True,pinned_num_register_threads:4"),
    );
    let c = Config::from_env().unwrap();
    assert_eq!(
        c.expandable_segments,
        Some(true),
        "PYTORCH_CUDA_ALLOC_CONF first"
    );
    assert_eq!(c.max_split_size, usize::MAX);
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains("pinned_num_register_threads"),
        "{:?}",
        c.warnings
    );
    assert_eq!(
        Config::env_text().unwrap(),
        Some((
            "PYTORCH_CUDA_ALLOC_CONF",
            "expandable_segments:True,pinned_num_register_threads:4".to_owned()
        ))
    );

    set("ALLOC_CONF", Some("expandable_segments:False"));
    assert_eq!(
        Config::from_env().unwrap().expandable_segments,
        Some(false),
        "ALLOC_CONF first"
    );

    set("ALLOC_CONF", None);
    set("PYTORCH_CUDA_ALLOC_CONF", Some("max_split_size_mb:4"));
    let e = Config::from_env().unwrap_err();
    assert!(
        matches!(e, ConfigError::BadValue { ref key, .. } if key == "max_split_size_mb"),
        "{e}"
    );

    set("PYTORCH_CUDA_ALLOC_CONF", None);
    set("PYTORCH_ALLOC_CONF", None);
}

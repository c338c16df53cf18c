//! The caching engine on Apple Metal devices (work in progress).

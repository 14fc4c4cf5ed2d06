//! A local Arvados Keep cluster for tests (work in progress).

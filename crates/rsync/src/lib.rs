//! keep-rsync (work in progress).

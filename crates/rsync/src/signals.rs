//! Ctrl-C and SIGTERM: the first stops new work and lets what is in flight finish
//! (the run then reports and exits 130); a second aborts at once.

use tokio_util::sync::CancellationToken;

/// Lets a second Ctrl-C abort at once; the first only stops new copies.
pub fn install(stop: CancellationToken, progress_note: impl Fn(&str) + Send + 'static) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            count += 1;
            if count == 1 {
                progress_note(
                    "interrupted: finishing the copies in flight (press Ctrl-C again to abort now)",
                );
                stop.cancel();
            } else {
                eprintln!("keep-rsync: aborted; blocks in flight were not counted as copied");
                std::process::exit(i32::from(crate::cli::exit::INTERRUPTED));
            }
        }
    });
}

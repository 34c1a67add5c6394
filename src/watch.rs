//! Watching configuration files for new content: the routes file and the TLS certificate.
//!
//! Files are watched through their directories, so an editor's atomic rename and the symlink
//! swap of Kubernetes ConfigMap and Secret volumes are seen as well as in-place writes. Only
//! events that end a change wake the watcher: a close after writing, a rename, a create, a
//! remove. Reads (the watcher's own included) and the individual writes of an in-place rewrite
//! do not, so a reload never sees a file half-written by a writer that is still at it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Whether a file event ends a change of content.
pub fn ends_a_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        // Each write of an in-place rewrite: wait for the close that ends it.
        EventKind::Modify(ModifyKind::Data(_)) => false,
        _ => true,
    }
}

/// The directory a file is watched through.
pub fn directory_of(file: &Path) -> PathBuf {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Watches directories and wakes once per burst of changes.
pub struct DirWatcher {
    _watcher: RecommendedWatcher,
    changes: mpsc::UnboundedReceiver<()>,
}

impl DirWatcher {
    /// Watches each of `dirs` (not recursively).
    pub fn new(dirs: &[PathBuf]) -> notify::Result<Self> {
        let (tx, changes) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| ends_a_change(&e.kind)) {
                    let _ = tx.send(());
                }
            })?;
        let mut watched: Vec<&PathBuf> = Vec::new();
        for dir in dirs {
            if !watched.contains(&dir) {
                watcher.watch(dir, RecursiveMode::NonRecursive)?;
                watched.push(dir);
            }
        }
        Ok(DirWatcher {
            _watcher: watcher,
            changes,
        })
    }

    /// Waits for a change, then for `settle` more so a burst (two files written, a volume
    /// swapped) becomes one wake-up. False once the watcher has stopped.
    pub async fn changed(&mut self, settle: Duration) -> bool {
        if self.changes.recv().await.is_none() {
            return false;
        }
        tokio::time::sleep(settle).await;
        while self.changes.try_recv().is_ok() {}
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};

    #[test]
    fn only_the_end_of_a_change_counts() {
        assert!(!ends_a_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!ends_a_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!ends_a_change(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(ends_a_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(ends_a_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(ends_a_change(&EventKind::Create(CreateKind::File)));
        assert!(ends_a_change(&EventKind::Remove(RemoveKind::File)));
    }

    #[tokio::test]
    async fn an_in_place_write_wakes_once_after_the_close() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, "a").unwrap();
        let mut watcher = DirWatcher::new(&[directory_of(&file)]).unwrap();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&file)
                .unwrap();
            f.write_all(b"first half").unwrap();
            f.flush().unwrap();
            // Still open: nothing has ended yet.
            assert!(
                tokio::time::timeout(Duration::from_millis(200), watcher.changes.recv())
                    .await
                    .is_err()
            );
            f.write_all(b" second half").unwrap();
        }
        assert!(watcher.changed(Duration::from_millis(10)).await);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "first half second half"
        );
    }
}

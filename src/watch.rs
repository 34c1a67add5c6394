//! Watching configuration files for new content: the routes file and the TLS certificate.
//!
//! A file is watched through the directories that decide what its path resolves to: the real
//! directory holding the file, and the directory holding each symlink met on the way. A
//! Kubernetes ConfigMap or Secret volume is such a path: `tls/cert.pem` in the mount directory
//! is a symlink to `..data/tls/cert.pem`, `..data` a symlink to a timestamped directory, and an
//! update writes a new timestamped directory, renames a new symlink over `..data` and deletes the
//! old directory. The mount directory (which holds the symlinks) is therefore always watched, and
//! after every wake-up the path is resolved again, so the watch follows `..data` to each new
//! directory and drops the deleted one: any number of updates are seen, not only the first.
//!
//! Only events that end a change wake the watcher: a close after writing, a rename, a create, a
//! remove. Reads (the watcher's own included) and the individual writes of an in-place rewrite
//! do not, so a reload never sees a file half-written by a writer that is still at it.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Symlinks followed while resolving one path before giving up (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

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

/// One step of a path still to resolve.
enum Step {
    Root,
    Parent,
    Name(OsString),
}

fn steps(path: &Path) -> impl Iterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::Prefix(_) | Component::RootDir => Some(Step::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Step::Parent),
        Component::Normal(name) => Some(Step::Name(name.to_owned())),
    })
}

/// The real directories whose entries decide what `file` resolves to: the one holding each
/// symlink on the way, and the one holding the file. Where the path does not resolve (a swap
/// in progress removed a part of it), the deepest existing directory stands in for the rest.
pub fn deciding_directories(file: &Path) -> BTreeSet<PathBuf> {
    let mut directories = BTreeSet::new();
    let mut resolved = PathBuf::from("/");
    let mut pending: VecDeque<Step> = steps(file).collect();
    let mut followed = 0;
    let mut complete = true;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Root => {
                resolved = PathBuf::from("/");
                continue;
            }
            Step::Parent => {
                resolved.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let candidate = resolved.join(&name);
        let link = match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => std::fs::read_link(&candidate).ok(),
            Ok(_) => {
                resolved = candidate;
                continue;
            }
            Err(_) => None,
        };
        match link {
            Some(target) if followed < MAX_SYMLINKS => {
                followed += 1;
                directories.insert(resolved.clone());
                for step in steps(&target).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(step);
                }
            }
            _ => {
                complete = false;
                break;
            }
        }
    }
    if complete {
        resolved.pop();
    }
    directories.insert(resolved);
    directories
}

/// Watches files (see the module documentation) and wakes once per burst of changes.
pub struct FileWatcher {
    watcher: RecommendedWatcher,
    files: Vec<PathBuf>,
    watched: BTreeSet<PathBuf>,
    changes: mpsc::UnboundedReceiver<()>,
}

impl FileWatcher {
    /// Watches each of `files`; relative paths are taken from the current directory now.
    pub fn new(files: &[PathBuf]) -> notify::Result<Self> {
        let (tx, changes) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| ends_a_change(&e.kind)) {
                let _ = tx.send(());
            }
        })?;
        let cwd = std::env::current_dir()?;
        let mut this = FileWatcher {
            watcher,
            files: files.iter().map(|f| cwd.join(f)).collect(),
            watched: BTreeSet::new(),
            changes,
        };
        for directory in this.wanted() {
            this.watcher
                .watch(&directory, RecursiveMode::NonRecursive)?;
            this.watched.insert(directory);
        }
        Ok(this)
    }

    fn wanted(&self) -> BTreeSet<PathBuf> {
        self.files
            .iter()
            .flat_map(|f| deciding_directories(f))
            .collect()
    }

    /// Resolves the files again and moves the watches to the directories that now decide them.
    /// A directory that cannot be watched yet is tried again at the next wake-up (the
    /// directories holding the symlinks stay watched, so that wake-up comes).
    fn follow(&mut self) {
        let wanted = self.wanted();
        for gone in self.watched.difference(&wanted) {
            // A deleted directory's watch is already gone: nothing to undo then.
            let _ = self.watcher.unwatch(gone);
        }
        self.watched.retain(|d| wanted.contains(d));
        for directory in wanted {
            if self.watched.contains(&directory) {
                continue;
            }
            match self.watcher.watch(&directory, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(directory);
                }
                Err(e) => tracing::debug!("cannot watch {} yet: {e}", directory.display()),
            }
        }
    }

    /// The directories watched now.
    pub fn watched(&self) -> impl Iterator<Item = &Path> {
        self.watched.iter().map(PathBuf::as_path)
    }

    /// Waits for a change, then for `settle` more so a burst (two files written, a volume
    /// swapped) becomes one wake-up, then follows the files to where they resolve now. False
    /// once the watcher has stopped.
    pub async fn changed(&mut self, settle: Duration) -> bool {
        if self.changes.recv().await.is_none() {
            return false;
        }
        tokio::time::sleep(settle).await;
        while self.changes.try_recv().is_ok() {}
        self.follow();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};
    use std::os::unix::fs::symlink;

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

    fn real(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().canonicalize().unwrap()
    }

    #[test]
    fn a_plain_file_is_decided_by_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, "a").unwrap();
        assert_eq!(deciding_directories(&file), BTreeSet::from([real(&dir)]));
    }

    #[test]
    fn a_projected_volume_is_decided_by_its_mount_and_its_current_data() {
        // The kubelet's layout for a projected volume with an item at `tls/cert.pem`.
        let dir = tempfile::tempdir().unwrap();
        let mount = real(&dir);
        std::fs::create_dir_all(mount.join("..2026_01/tls")).unwrap();
        std::fs::write(mount.join("..2026_01/tls/cert.pem"), "a").unwrap();
        symlink("..2026_01", mount.join("..data")).unwrap();
        symlink("..data/tls", mount.join("tls")).unwrap();
        let file = mount.join("tls/cert.pem");
        assert_eq!(
            deciding_directories(&file),
            BTreeSet::from([mount.clone(), mount.join("..2026_01/tls")])
        );
        // Mid-swap, with `..data` gone: the mount directory still decides.
        std::fs::remove_file(mount.join("..data")).unwrap();
        assert_eq!(deciding_directories(&file), BTreeSet::from([mount]));
    }

    #[test]
    fn a_symlink_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mount = real(&dir);
        symlink("b", mount.join("a")).unwrap();
        symlink("a", mount.join("b")).unwrap();
        assert_eq!(
            deciding_directories(&mount.join("a/file")),
            BTreeSet::from([mount])
        );
    }

    #[tokio::test]
    async fn an_in_place_write_wakes_once_after_the_close() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, "a").unwrap();
        let mut watcher = FileWatcher::new(std::slice::from_ref(&file)).unwrap();
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

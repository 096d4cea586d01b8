//! Test seams: named points where a unit test makes a hostile action's
//! move at the worst moment (a link replaced between two looks at it), so
//! the race is forced rather than hoped for. Hooks are per thread, so the
//! walks of tests running beside each other never fire one another's (the
//! `fail` crate's points are process-wide); outside `cfg(test)` a seam is
//! nothing.
use std::path::Path;

/// Where a seam stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seam {
    /// A sandbox link's target was read; its time is read next.
    SandboxLinkRead,
    /// A declaration file's symlink was dated old enough; its target is
    /// read next.
    DeclaredLinkDated,
}

#[cfg(test)]
type Hook = Box<dyn FnMut(&Path)>;

#[cfg(test)]
thread_local! {
    static HOOKS: std::cell::RefCell<Vec<(Seam, Hook)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The code reached `seam` with `path`: runs this thread's hooks for it.
#[inline(always)]
pub(crate) fn reached(seam: Seam, path: &Path) {
    #[cfg(test)]
    HOOKS.with(|hooks| {
        for (at, hook) in hooks.borrow_mut().iter_mut() {
            if *at == seam {
                hook(path);
            }
        }
    });
    #[cfg(not(test))]
    let _ = (seam, path);
}

/// Runs `body` with `hook` called at each `seam` this thread reaches.
#[cfg(test)]
pub(crate) fn with_hook<R>(
    seam: Seam,
    hook: impl FnMut(&Path) + 'static,
    body: impl FnOnce() -> R,
) -> R {
    HOOKS.with(|hooks| hooks.borrow_mut().push((seam, Box::new(hook))));
    // Removed even when `body` panics (a failed assertion), so the
    // thread's next test starts clean.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            HOOKS.with(|hooks| hooks.borrow_mut().clear());
        }
    }
    let _clear = Clear;
    body()
}

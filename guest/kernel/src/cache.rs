//! Where built artifacts live (docs/contracts.md, "Artifact cache"):
//! `$ISOLAB_CACHE`, else `$XDG_CACHE_HOME/isolab`, else `$HOME/.cache/isolab`.

use std::path::PathBuf;

/// No cache directory can be derived from the environment.
#[derive(Debug, thiserror::Error)]
#[error("No cache directory: set ISOLAB_CACHE (or HOME) to a writable directory")]
pub struct CacheError;

/// The cache root from explicit environment values (testable).
pub fn cache_root_from(
    isolab_cache: Option<&str>,
    xdg_cache_home: Option<&str>,
    home: Option<&str>,
) -> Result<PathBuf, CacheError> {
    let set = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(p) = set(isolab_cache) {
        return Ok(p);
    }
    if let Some(p) = set(xdg_cache_home) {
        return Ok(p.join("isolab"));
    }
    if let Some(p) = set(home) {
        return Ok(p.join(".cache").join("isolab"));
    }
    Err(CacheError)
}

/// The cache root from this process's environment.
pub fn cache_root() -> Result<PathBuf, CacheError> {
    let var = |k| std::env::var(k).ok();
    cache_root_from(
        var("ISOLAB_CACHE").as_deref(),
        var("XDG_CACHE_HOME").as_deref(),
        var("HOME").as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_follows_the_contract() {
        let r = |a, b, c| cache_root_from(a, b, c).unwrap();
        assert_eq!(r(Some("/c"), Some("/x"), Some("/h")), PathBuf::from("/c"));
        assert_eq!(r(None, Some("/x"), Some("/h")), PathBuf::from("/x/isolab"));
        assert_eq!(
            r(Some(""), None, Some("/h")),
            PathBuf::from("/h/.cache/isolab")
        );
        assert!(cache_root_from(None, None, None).is_err());
    }
}

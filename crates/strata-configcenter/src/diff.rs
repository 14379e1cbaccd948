//! Line diffs between two versions of a config.
//!
//! The output is the unified format of GNU `diff -u` and `git diff`, so operators can read it
//! and tools can apply it with `patch`.

use std::time::Duration;

use similar::{Algorithm, TextDiff};

/// Lines of unchanged context around each change, as in `diff -u`.
const CONTEXT_LINES: usize = 3;

/// Bounds the time Myers' algorithm may spend on two very different large inputs. Past it the
/// diff is still correct but may not be minimal.
const DIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// A unified diff of two versions, with `from`/`to` labels in the header (e.g. "version 3"), 3
/// lines of context; empty string when equal.
///
/// The header is `--- {from}` and `+++ {to}`, followed by `@@ -l,n +l,n @@` hunks. A last line
/// without a newline is followed by `\ No newline at end of file`, as in GNU diff, so a change
/// of the final newline alone is visible.
pub fn unified(old: &str, new: &str, from: &str, to: &str) -> String {
    if old == new {
        return String::new();
    }
    TextDiff::configure()
        .algorithm(Algorithm::Myers)
        .timeout(DIFF_TIMEOUT)
        // Keep each line's own terminator, so a missing final newline gets its marker.
        .newline_terminated(true)
        .diff_lines(old, new)
        .unified_diff()
        .context_radius(CONTEXT_LINES)
        .header(from, to)
        .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn equal_inputs_give_an_empty_diff() {
        assert_eq!(unified("", "", "version 1", "version 2"), "");
        assert_eq!(unified("a\nb\n", "a\nb\n", "version 1", "version 2"), "");
    }

    #[test]
    fn one_changed_line_with_three_lines_of_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let new = "1\n2\n3\n4\n5\nsix\n7\n8\n9\n10\n";
        let expected = "\
--- version 3
+++ version 4
@@ -3,7 +3,7 @@
 3
 4
 5
-6
+six
 7
 8
 9
";
        assert_eq!(unified(old, new, "version 3", "version 4"), expected);
    }

    #[test]
    fn distant_changes_make_separate_hunks() {
        let old: String = (1..=20).map(|n| format!("line {n}\n")).collect();
        let new = old
            .replace("line 2\n", "line two\n")
            .replace("line 18\n", "");
        let expected = "\
--- a
+++ b
@@ -1,5 +1,5 @@
 line 1
-line 2
+line two
 line 3
 line 4
 line 5
@@ -15,6 +15,5 @@
 line 15
 line 16
 line 17
-line 18
 line 19
 line 20
";
        assert_eq!(unified(&old, &new, "a", "b"), expected);
    }

    #[test]
    fn additions_to_and_removals_from_empty() {
        assert_eq!(
            unified("", "a=1\nb=2\n", "version 0", "version 1"),
            "--- version 0\n+++ version 1\n@@ -0,0 +1,2 @@\n+a=1\n+b=2\n"
        );
        assert_eq!(
            unified("a=1\n", "", "version 1", "version 2"),
            "--- version 1\n+++ version 2\n@@ -1 +0,0 @@\n-a=1\n"
        );
    }

    #[test]
    fn missing_final_newline_is_marked() {
        assert_eq!(
            unified("a\nb", "a\nb\n", "old", "new"),
            "--- old\n+++ new\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n"
        );
        assert_eq!(
            unified("x", "y", "old", "new"),
            "--- old\n+++ new\n@@ -1 +1 @@\n-x\n\\ No newline at end of file\n+y\n\
             \\ No newline at end of file\n"
        );
    }

    #[test]
    fn large_inputs_finish() {
        let old: String = (0..20_000).map(|n| format!("{n}\n")).collect();
        let new: String = (0..20_000)
            .map(|n| format!("{}\n", n * 7 % 20_011))
            .collect();
        let diff = unified(&old, &new, "a", "b");
        assert!(diff.starts_with("--- a\n+++ b\n@@ "));
    }
}

//! Adds up libtest's `test result:` lines into one closing line.

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub suites: u64,
}

impl Totals {
    /// Counts a line like
    /// `test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
    pub(crate) fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            return;
        };
        self.suites += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }

    /// `summary: N passed, N failed, N skipped` (ignored tests count as skipped).
    pub(crate) fn line(&self) -> String {
        format!(
            "summary: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_added_up() {
        let mut t = Totals::default();
        t.add_line("running 3 tests");
        t.add_line("test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line("test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s");
        assert_eq!(
            t,
            Totals {
                passed: 7,
                failed: 3,
                ignored: 1,
                suites: 2
            }
        );
        assert_eq!(t.line(), "summary: 7 passed, 3 failed, 1 skipped");
    }

    #[test]
    fn other_lines_are_ignored() {
        let mut t = Totals::default();
        t.add_line("test foo ... ok");
        t.add_line("   Doc-tests berth");
        assert_eq!(t, Totals::default());
    }
}

//! DeepSpeed's hostfile (`launcher/runner.py::_parse_hostfile`): one `hostname slots=N` per line, `#` comments and
//! blank lines ignored, hosts kept in file order (that order is the rank order).

use std::fmt;

/// One host of the hostfile and the number of ranks it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub name: String,
    pub slots: usize,
}

/// Why a hostfile was refused; the texts are DeepSpeed's, with the line number added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostfileError {
    /// A non-comment line that is not `hostname slots=N`.
    BadEntry { line_number: usize, line: String },
    /// The same hostname on two lines.
    DuplicateHost { line_number: usize, host: String },
    /// No host line at all.
    Empty,
}

impl fmt::Display for HostfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostfileError::BadEntry { line_number, line } => write!(
                f,
                "Hostfile contains a bad entry: {line}, unable to proceed with launching \
                 (line {line_number}; expected 'hostname slots=N')"
            ),
            HostfileError::DuplicateHost { line_number, host } => write!(
                f,
                "Hostfile contains multiple entries for {host}, unable to proceed with launching \
                 (second entry on line {line_number})"
            ),
            HostfileError::Empty => {
                f.write_str("Hostfile is empty or not formatted correctly, unable to proceed with launching.")
            }
        }
    }
}

/// Matches DeepSpeed's regex `^(\S+)\s+slots=(\d+)` on a trimmed line: a hostname, whitespace, `slots=` and
/// digits; like `re.search` with that pattern, whatever follows the digits is ignored.
fn match_entry(line: &str) -> Option<(&str, usize)> {
    let host_end = line.find(char::is_whitespace)?;
    let (host, rest) = line.split_at(host_end);
    let digits = rest.trim_start().strip_prefix("slots=")?;
    let digits_end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    let slots = digits[..digits_end].parse().ok()?;
    Some((host, slots))
}

/// Parses a hostfile's text into its hosts, in file order.
pub fn parse_hostfile(text: &str) -> Result<Vec<HostEntry>, HostfileError> {
    let mut hosts: Vec<HostEntry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line_number = index + 1;
        let Some((name, slots)) = match_entry(line) else {
            return Err(HostfileError::BadEntry { line_number, line: line.to_string() });
        };
        if hosts.iter().any(|h| h.name == name) {
            return Err(HostfileError::DuplicateHost { line_number, host: name.to_string() });
        }
        hosts.push(HostEntry { name: name.to_string(), slots });
    }
    if hosts.is_empty() {
        return Err(HostfileError::Empty);
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, slots: usize) -> HostEntry {
        HostEntry { name: name.to_string(), slots }
    }

    /// DeepSpeed's `test_hostfile_good`: indentation, blank lines and comments (including a commented-out host).
    #[test]
    fn good_hostfile_with_comments_and_blank_lines() {
        let text =
            "\n    worker-1 slots=2\n    worker-2 slots=2\n\n    localhost slots=1\n    123.23.12.10 slots=2\n\n    \
                    #worker-1 slots=3\n    # this is a comment\n\n    ";
        let hosts = parse_hostfile(text).unwrap();
        assert_eq!(
            hosts,
            vec![entry("worker-1", 2), entry("worker-2", 2), entry("localhost", 1), entry("123.23.12.10", 2)]
        );
    }

    #[test]
    fn tabs_and_trailing_text_are_accepted_as_by_the_regex() {
        let hosts = parse_hostfile("a\t slots=16 # the big one\nb slots=3 max_slots=4").unwrap();
        assert_eq!(hosts, vec![entry("a", 16), entry("b", 3)]);
    }

    /// DeepSpeed's `test_hostfiles_bad`, each case checked for the error kind and the line it names.
    #[test]
    fn bad_hostfiles_name_the_line() {
        let duplicate = parse_hostfile("\nworker-1 slots=2\nworker-2 slots=1\nworker-1 slots=1\n").unwrap_err();
        assert_eq!(duplicate, HostfileError::DuplicateHost { line_number: 4, host: "worker-1".into() });
        assert!(duplicate.to_string().starts_with("Hostfile contains multiple entries for worker-1, unable"));

        let spaces = parse_hostfile("\n    this is bad slots=1\n").unwrap_err();
        assert_eq!(spaces, HostfileError::BadEntry { line_number: 2, line: "this is bad slots=1".into() });
        assert!(spaces.to_string().starts_with("Hostfile contains a bad entry: this is bad slots=1, unable"));

        let no_slots = parse_hostfile("missingslots").unwrap_err();
        assert_eq!(no_slots, HostfileError::BadEntry { line_number: 1, line: "missingslots".into() });

        let mixed = parse_hostfile("worker-1 slots=2\nthis is bad slots=1\nworker-2 slots=4\nmissingslots\n");
        assert_eq!(mixed.unwrap_err(), HostfileError::BadEntry { line_number: 2, line: "this is bad slots=1".into() });
    }

    #[test]
    fn malformed_slot_counts_are_bad_entries() {
        for line in ["w slots=", "w slots=-1", "w slots = 2", "w slot=2", "w slots=99999999999999999999999"] {
            let err = parse_hostfile(line).unwrap_err();
            assert_eq!(err, HostfileError::BadEntry { line_number: 1, line: line.into() }, "{line}");
        }
    }

    #[test]
    fn empty_and_comment_only_files_are_refused() {
        for text in ["", "\n   \n", "# only a comment\n"] {
            assert_eq!(parse_hostfile(text).unwrap_err(), HostfileError::Empty, "{text:?}");
        }
        assert!(HostfileError::Empty.to_string().starts_with("Hostfile is empty or not formatted correctly"));
    }
}

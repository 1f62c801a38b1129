//! A small command-line parser: `--name value` options and `--flag` switches, each declared by the command, with
//! errors that name the bad flag (and the closest known one).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// One option a command accepts.
pub struct Opt {
    pub name: &'static str,
    /// `None`: a switch without a value.
    pub value: Option<&'static str>,
    pub help: &'static str,
}

pub const fn opt(name: &'static str, value: &'static str, help: &'static str) -> Opt {
    Opt { name, value: Some(value), help }
}

pub const fn switch(name: &'static str, help: &'static str) -> Opt {
    Opt { name, value: None, help }
}

#[derive(Debug)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parsed options of one command.
pub struct Args {
    command: &'static str,
    values: BTreeMap<&'static str, String>,
}

/// Usage text of a command's options.
pub fn usage(command: &str, opts: &[Opt]) -> String {
    let mut s = format!("options of `rustspeed {command}`:\n");
    for o in opts {
        let left = match o.value {
            Some(v) => format!("--{} {v}", o.name),
            None => format!("--{}", o.name),
        };
        s.push_str(&format!("  {left:<28} {}\n", o.help));
    }
    s
}

impl Args {
    /// Parses `argv` (after the command name) against `opts`.
    pub fn parse(command: &'static str, opts: &'static [Opt], argv: &[String]) -> Result<Args, ArgError> {
        let mut values = BTreeMap::new();
        let mut it = argv.iter();
        while let Some(arg) = it.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(ArgError(format!(
                    "unexpected argument '{arg}' for `rustspeed {command}`; options start with --\n{}",
                    usage(command, opts)
                )));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let Some(o) = opts.iter().find(|o| o.name == name) else {
                let closest = rustspeed_config::closest(name, opts.iter().map(|o| o.name));
                let hint = closest.map_or(String::new(), |o| format!(" (did you mean --{o}?)"));
                return Err(ArgError(format!(
                    "unknown option --{name} for `rustspeed {command}`{hint}\n{}",
                    usage(command, opts)
                )));
            };
            let value = match (o.value, inline) {
                (None, None) => "true".to_string(),
                (None, Some(_)) => return Err(ArgError(format!("--{name} takes no value"))),
                (Some(_), Some(v)) => v,
                (Some(what), None) => match it.next() {
                    Some(v) if !v.starts_with("--") => v.clone(),
                    _ => return Err(ArgError(format!("--{name} needs a value ({what})"))),
                },
            };
            if values.insert(o.name, value).is_some() {
                return Err(ArgError(format!("--{name} is given twice")));
            }
        }
        Ok(Args { command, values })
    }

    pub fn flag(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|s| s.as_str())
    }

    pub fn required(&self, name: &str) -> Result<&str, ArgError> {
        self.get(name).ok_or_else(|| ArgError(format!("`rustspeed {}` needs --{name}", self.command)))
    }

    /// The value of `--name` parsed as `T`, or `default` when absent.
    pub fn parsed<T: FromStr>(&self, name: &str, default: T) -> Result<T, ArgError>
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| ArgError(format!("--{name} {v}: {e}"))),
        }
    }

    /// [`Args::parsed`] within `range` (a NaN is outside every range); the error gives the allowed range.
    pub fn parsed_in<T>(&self, name: &str, default: T, range: RangeInclusive<T>) -> Result<T, ArgError>
    where
        T: FromStr + PartialOrd + fmt::Display,
        T::Err: fmt::Display,
    {
        let value = self.parsed(name, default)?;
        match range.contains(&value) {
            true => Ok(value),
            false => Err(ArgError(format!(
                "--{name} {}: must be between {} and {}",
                self.get(name).unwrap_or_default(),
                range.start(),
                range.end()
            ))),
        }
    }
}

/// Parses `argv` for `command`, or prints its usage for `--help` (returning `None`).
pub fn parse(command: &'static str, opts: &'static [Opt], argv: &[String]) -> Result<Option<Args>, String> {
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage(command, opts));
        return Ok(None);
    }
    Args::parse(command, opts, argv).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: &[Opt] = &[opt("steps", "N", "steps"), switch("resume", "resume"), opt("out", "DIR", "out")];

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_values_switches_and_equals_form() {
        let a = Args::parse("train", OPTS, &argv("--steps 5 --resume --out=run")).unwrap();
        assert_eq!(a.parsed::<u64>("steps", 0).unwrap(), 5);
        assert!(a.flag("resume"));
        assert_eq!(a.get("out"), Some("run"));
    }

    #[test]
    fn bad_flags_are_named() {
        let e = Args::parse("train", OPTS, &argv("--step 5")).err().unwrap().0;
        assert!(e.contains("unknown option --step") && e.contains("did you mean --steps?"), "{e}");
        assert!(Args::parse("train", OPTS, &argv("--steps")).err().unwrap().0.contains("needs a value"));
        assert!(Args::parse("train", OPTS, &argv("--steps 1 --steps 2")).err().unwrap().0.contains("twice"));
        let e = Args::parse("train", OPTS, &argv("--steps x")).unwrap().parsed::<u64>("steps", 0).err().unwrap().0;
        assert!(e.contains("--steps x"), "{e}");
    }
}

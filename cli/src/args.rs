//! A small command-line flag parser: `-m FILE`, `--temp 0.7`, `--json`, positional words.
//!
//! Each subcommand declares which flags take a value and which are switches; anything
//! else is a one-line error naming the flag.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A flag that takes a value: its long name and optional short alias.
pub type Valued = (&'static str, Option<&'static str>);

/// What a subcommand accepts: flags with values (in groups, so commands can share one)
/// and switches.
pub struct Spec {
    pub valued: &'static [&'static [Valued]],
    pub switches: &'static [&'static str],
    pub max_positional: usize,
}

/// Parsed arguments of one subcommand.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<&'static str, String>,
    switches: Vec<&'static str>,
    pub positional: Vec<String>,
}

impl Args {
    pub fn parse(spec: &Spec, raw: &[String]) -> Result<Self, ArgError> {
        let mut args = Args::default();
        let mut it = raw.iter();
        while let Some(word) = it.next() {
            if word == "--" {
                args.positional.extend(it.by_ref().cloned());
                break;
            }
            if word.starts_with('-') && word.len() > 1 && !looks_numeric(word) {
                let (name, inline) = match word.split_once('=') {
                    Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                    _ => (word.as_str(), None),
                };
                if let Some(&(long, _)) = spec
                    .valued
                    .iter()
                    .flat_map(|group| group.iter())
                    .find(|(long, short)| *long == name || *short == Some(name))
                {
                    let value = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| ArgError(format!("{name} needs a value")))?,
                    };
                    args.values.insert(long, value);
                } else if let Some(&sw) = spec.switches.iter().find(|s| **s == name) {
                    if inline.is_some() {
                        return Err(ArgError(format!("{name} takes no value")));
                    }
                    args.switches.push(sw);
                } else {
                    return Err(ArgError(format!("unknown option `{word}`")));
                }
            } else {
                args.positional.push(word.clone());
            }
        }
        if args.positional.len() > spec.max_positional {
            return Err(ArgError(format!(
                "unexpected argument `{}`",
                args.positional[spec.max_positional]
            )));
        }
        Ok(args)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.switches.contains(&name)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> Result<&str, ArgError> {
        self.value(name)
            .ok_or_else(|| ArgError(format!("missing required option {name}")))
    }

    /// Parses a flag's value, with a one-line error naming the flag on failure.
    pub fn parsed<T: FromStr>(&self, name: &str) -> Result<Option<T>, ArgError> {
        match self.value(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ArgError(format!("invalid value `{v}` for {name}"))),
        }
    }
}

/// `-1`, `-0.5`: values, not flags.
fn looks_numeric(word: &str) -> bool {
    word[1..].parse::<f64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        valued: &[&[("--model", Some("-m"))], &[("--temp", None)]],
        switches: &["--json"],
        max_positional: 1,
    };

    fn parse(words: &[&str]) -> Result<Args, ArgError> {
        let raw: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        Args::parse(&SPEC, &raw)
    }

    #[test]
    fn values_switches_and_positionals() {
        let a = parse(&["-m", "x.gguf", "--temp=0.5", "--json", "hello"]).unwrap();
        assert_eq!(a.value("--model"), Some("x.gguf"));
        assert_eq!(a.parsed::<f32>("--temp").unwrap(), Some(0.5));
        assert!(a.flag("--json"));
        assert_eq!(a.positional, vec!["hello"]);
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(
            parse(&["--bogus"]).unwrap_err().0,
            "unknown option `--bogus`"
        );
        assert_eq!(parse(&["-m"]).unwrap_err().0, "-m needs a value");
        assert_eq!(parse(&["a", "b"]).unwrap_err().0, "unexpected argument `b`");
        let a = parse(&["--temp", "hot"]).unwrap();
        assert_eq!(
            a.parsed::<f32>("--temp").unwrap_err().0,
            "invalid value `hot` for --temp"
        );
        assert_eq!(parse(&["--json=1"]).unwrap_err().0, "--json takes no value");
    }

    #[test]
    fn negative_numbers_are_values() {
        let a = parse(&["--temp", "-1"]).unwrap();
        assert_eq!(a.parsed::<f32>("--temp").unwrap(), Some(-1.0));
    }
}

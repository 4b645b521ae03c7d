//! Loads broker settings: defaults, then `--config FILE` (TOML or Kafka
//! `.properties`), then `--override key=value`, each overriding the last.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub fn load(config_file: Option<&Path>, overrides: &[String]) -> Result<BTreeMap<String, String>> {
    let mut settings = BTreeMap::new();
    if let Some(path) = config_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let parsed = if path.extension().is_some_and(|e| e == "toml") {
            parse_toml(&text).with_context(|| format!("parsing {}", path.display()))?
        } else {
            parse_properties(&text)
        };
        settings.extend(parsed);
    }
    for o in overrides {
        let Some((key, value)) = o.split_once('=') else {
            bail!("--override takes key=value, got {o:?}");
        };
        settings.insert(key.trim().to_string(), value.trim().to_string());
    }
    Ok(settings)
}

/// Kafka's `.properties`: `key=value` or `key: value`, `#` and `!` comments.
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .filter_map(|l| {
            let split = l.find(['=', ':'])?;
            Some((
                l[..split].trim().to_string(),
                l[split + 1..].trim().to_string(),
            ))
        })
        .collect()
}

/// TOML with either quoted dotted keys (`"log.dirs" = "..."`) or tables
/// (`[log] dirs = "..."`); both flatten to Kafka's dotted names.
pub fn parse_toml(text: &str) -> Result<BTreeMap<String, String>> {
    let table: toml::Table = text.parse()?;
    let mut out = BTreeMap::new();
    flatten("", &toml::Value::Table(table), &mut out);
    Ok(out)
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        toml::Value::Table(t) => t.iter().for_each(|(k, v)| flatten(&key(k), v, out)),
        toml::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        toml::Value::Array(items) => {
            let joined: Vec<String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.insert(prefix.to_string(), joined.join(","));
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_toml_agree() {
        let props =
            parse_properties("# comment\nlog.dirs=/tmp/k\nnum.partitions: 3\n! also comment\n");
        let toml = parse_toml("\"log.dirs\" = \"/tmp/k\"\n[num]\npartitions = 3\n").unwrap();
        assert_eq!(props, toml);
        assert_eq!(props["num.partitions"], "3");
    }

    #[test]
    fn overrides_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.properties");
        std::fs::write(&path, "node.id=4\nlog.dirs=/a\n").unwrap();
        let s = load(Some(&path), &["log.dirs=/b".into()]).unwrap();
        assert_eq!(s["node.id"], "4");
        assert_eq!(s["log.dirs"], "/b");
        assert!(load(None, &["novalue".into()]).is_err());
    }
}

//! Template parameters: their declaration and the pure rules that turn a request, the
//! previous build's values and the defaults into a build's parameter values.
//!
//! No IO. The rules: a requested name must be declared; a value must fit its type and
//! options; an immutable parameter keeps its previous value (an *unchanged* value is not
//! a mutation, so claims and deletes that repeat it do not fail).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::ParameterType;

/// A template parameter as a version declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterSpec {
    pub name: String,
    pub kind: ParameterType,
    pub mutable: bool,
    pub default_value: Option<String>,
    /// Allowed values; empty = any value of the type.
    pub options: Vec<String>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParameterError {
    #[error("parameter {name:?} is not declared by the template version")]
    Unknown { name: String },
    #[error("parameter {name:?} has no value and no default")]
    Missing { name: String },
    #[error("parameter {name:?}: value {value:?} {reason}")]
    Invalid { name: String, value: String, reason: String },
    #[error("parameter {name:?} is immutable: it is {old:?} and cannot become {new:?}")]
    Immutable { name: String, old: String, new: String },
}

/// Checks `value` against the parameter's type and options.
pub fn check_value(spec: &ParameterSpec, value: &str) -> Result<(), ParameterError> {
    let invalid = |reason: &str| ParameterError::Invalid {
        name: spec.name.clone(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    match spec.kind {
        ParameterType::String => {}
        ParameterType::Number => {
            if !value.parse::<f64>().is_ok_and(f64::is_finite) {
                return Err(invalid("is not a number"));
            }
        }
        ParameterType::Bool => {
            if value != "true" && value != "false" {
                return Err(invalid("is not true or false"));
            }
        }
        ParameterType::ListString => {
            if serde_json::from_str::<Vec<String>>(value).is_err() {
                return Err(invalid("is not a JSON list of strings"));
            }
        }
    }
    if !spec.options.is_empty() && !spec.options.iter().any(|option| option == value) {
        return Err(invalid(&format!("is not one of the options {:?}", spec.options)));
    }
    Ok(())
}

/// The values of a new build: requested, else previous, else default, for every declared
/// parameter (previous values of parameters the version no longer declares are dropped).
pub fn resolve(
    specs: &[ParameterSpec],
    previous: &BTreeMap<String, String>,
    requested: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ParameterError> {
    if let Some(name) = requested.keys().find(|name| !specs.iter().any(|spec| &spec.name == *name))
    {
        return Err(ParameterError::Unknown { name: name.clone() });
    }
    let mut values = BTreeMap::new();
    for spec in specs {
        let old = previous.get(&spec.name);
        let value = requested
            .get(&spec.name)
            .or(old)
            .or(spec.default_value.as_ref())
            .ok_or_else(|| ParameterError::Missing { name: spec.name.clone() })?;
        check_value(spec, value)?;
        if !spec.mutable
            && let Some(old) = old
            && old != value
        {
            return Err(ParameterError::Immutable {
                name: spec.name.clone(),
                old: old.clone(),
                new: value.clone(),
            });
        }
        values.insert(spec.name.clone(), value.clone());
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        name: &str,
        kind: ParameterType,
        mutable: bool,
        default: Option<&str>,
    ) -> ParameterSpec {
        ParameterSpec {
            name: name.to_owned(),
            kind,
            mutable,
            default_value: default.map(str::to_owned),
            options: Vec::new(),
            description: String::new(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn requested_beats_previous_beats_default() {
        let specs = [
            spec("cpu", ParameterType::Number, true, Some("2")),
            spec("region", ParameterType::String, true, Some("eu")),
            spec("gpu", ParameterType::Bool, true, Some("false")),
        ];
        let values =
            resolve(&specs, &map(&[("cpu", "4"), ("region", "us")]), &map(&[("cpu", "8")]))
                .unwrap();
        assert_eq!(values, map(&[("cpu", "8"), ("region", "us"), ("gpu", "false")]));
    }

    #[test]
    fn an_unchanged_immutable_value_is_not_a_mutation() {
        let specs = [spec("disk", ParameterType::Number, false, Some("10"))];
        let previous = map(&[("disk", "20")]);
        assert_eq!(resolve(&specs, &previous, &map(&[("disk", "20")])).unwrap(), previous);
        assert_eq!(resolve(&specs, &previous, &BTreeMap::new()).unwrap(), previous);
        assert_eq!(
            resolve(&specs, &previous, &map(&[("disk", "30")])),
            Err(ParameterError::Immutable {
                name: "disk".into(),
                old: "20".into(),
                new: "30".into()
            })
        );
        // The first build may set it freely.
        assert_eq!(
            resolve(&specs, &BTreeMap::new(), &map(&[("disk", "30")])).unwrap(),
            map(&[("disk", "30")])
        );
    }

    #[test]
    fn bad_values_and_names_are_named() {
        let mut with_options = spec("size", ParameterType::String, true, None);
        with_options.options = vec!["s".into(), "m".into()];
        let specs = [spec("cpu", ParameterType::Number, true, Some("2")), with_options];
        assert!(matches!(
            resolve(&specs, &BTreeMap::new(), &map(&[("size", "xl")])),
            Err(ParameterError::Invalid { name, .. }) if name == "size"
        ));
        assert!(matches!(
            resolve(&specs, &BTreeMap::new(), &map(&[("size", "s"), ("cpu", "many")])),
            Err(ParameterError::Invalid { name, .. }) if name == "cpu"
        ));
        assert_eq!(
            resolve(&specs, &BTreeMap::new(), &map(&[("size", "s"), ("ram", "1")])),
            Err(ParameterError::Unknown { name: "ram".into() })
        );
        assert_eq!(
            resolve(&specs, &BTreeMap::new(), &BTreeMap::new()),
            Err(ParameterError::Missing { name: "size".into() })
        );
    }

    #[test]
    fn types_are_checked() {
        let list = spec("tags", ParameterType::ListString, true, None);
        assert!(check_value(&list, r#"["a","b"]"#).is_ok());
        assert!(check_value(&list, "a,b").is_err());
        let flag = spec("gpu", ParameterType::Bool, true, None);
        assert!(check_value(&flag, "true").is_ok());
        assert!(check_value(&flag, "yes").is_err());
        let number = spec("cpu", ParameterType::Number, true, None);
        assert!(check_value(&number, "1.5").is_ok());
        assert!(check_value(&number, "NaN").is_err());
    }
}

//! Fieldless enums with exactly one string form per variant.
//!
//! `strum` derives the mapping (`IntoStaticStr`, `EnumString`, `VariantArray`, `Display`);
//! [`TextEnum`] adds the shared surface every such enum has here (`ALL`, `as_str`,
//! `parse`), [`unknown`] is the error an unknown string gets (it names the value and every
//! accepted one), and [`text_enums!`](crate::text_enums) implements it and makes serde read and
//! write the same strings through `FromStr`, so a bad value in a JSON document or a TOML
//! file gets that same message.

/// An unknown string for one of the text enums.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct UnknownVariant {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

/// A strum-derived fieldless enum with one string per variant.
pub trait TextEnum: Copy + Eq + strum::VariantArray + Into<&'static str> + 'static {
    /// What a value is called in an error ("transition", "job status").
    const WHAT: &'static str;

    /// Every variant, in declaration order.
    const ALL: &'static [Self] = Self::VARIANTS;

    /// The one string form of this variant.
    fn as_str(self) -> &'static str {
        self.into()
    }

    /// The variant with this exact string form.
    fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|variant| variant.as_str() == text)
    }
}

/// The error for `value`, which is not one of `T`'s strings (strum's `parse_err_fn`).
pub fn unknown<T: TextEnum>(value: &str) -> UnknownVariant {
    UnknownVariant {
        what: T::WHAT,
        value: value.to_owned(),
        expected: T::ALL.iter().map(|variant| variant.as_str()).collect::<Vec<_>>().join(", "),
    }
}

/// Declares strum-derived enums text enums: `Type => "what it is called"` implements
/// [`TextEnum`], `Serialize` (the variant's string) and `Deserialize` (through `FromStr`, so
/// the error is [`UnknownVariant`]'s).
#[macro_export]
macro_rules! text_enums {
    ($($name:ty => $what:literal),+ $(,)?) => {$(
        impl $crate::domain::text::TextEnum for $name {
            const WHAT: &'static str = $what;
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str($crate::domain::text::TextEnum::as_str(*self))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

//! String choices for slash options.
//!
//! poise's `ChoiceParameter` and `#[choices]` register *integer* choices (the index), so
//! Discord sends `1` for "stability". These register string choices instead: Discord shows the
//! same dropdown and sends the string itself, which logs, tests and the simulator can read.

/// Declares an enum whose variants are a slash option's string choices.
macro_rules! string_choices {
    ($(#[$meta:meta])* $ty:ident { $($variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $ty {
            $($variant),+
        }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $value),+
                }
            }
        }

        #[poise::async_trait]
        impl poise::SlashArgument for $ty {
            async fn extract(
                _: &poise::serenity_prelude::Context,
                _: &poise::serenity_prelude::CommandInteraction,
                value: &poise::serenity_prelude::ResolvedValue<'_>,
            ) -> Result<Self, poise::SlashArgError> {
                match value {
                    poise::serenity_prelude::ResolvedValue::String(s) => Self::ALL
                        .iter()
                        .copied()
                        .find(|c| c.as_str() == *s)
                        .ok_or_else(|| poise::SlashArgError::new_command_structure_mismatch("not one of the choices")),
                    _ => Err(poise::SlashArgError::new_command_structure_mismatch("expected a string choice")),
                }
            }

            fn create(builder: poise::serenity_prelude::CreateCommandOption) -> poise::serenity_prelude::CreateCommandOption {
                Self::ALL.iter().fold(
                    builder.kind(poise::serenity_prelude::CommandOptionType::String),
                    |b, c| b.add_string_choice(c.as_str(), c.as_str()),
                )
            }
        }
    };
}

pub(crate) use string_choices;

//! String choices for slash options: [`Choice<T>`], a slash argument whose choices are the
//! values of a [`Choices`] enum from `keyshard-types` (`ProviderKind`, `AspectRatio`).
//!
//! poise's `ChoiceParameter` and `#[choices]` register *integer* choices (the index), so
//! Discord sends `1` for "stability". These register string choices instead: Discord shows the
//! same dropdown and sends the string itself, which logs, tests and the simulator can read.
//!
//! A newtype, because the enums live in `keyshard-types`, which knows nothing of Discord, and
//! the orphan rule forbids implementing poise's trait for them here. The command unwraps it
//! (`.0`) and hands the enum on to the job, and the job to the provider call: one type from
//! the dropdown to the request.

use keyshard_types::Choices;
use poise::serenity_prelude as serenity;

/// A slash option whose string choices are `T`'s values, shown and sent as
/// [`Choices::label`] and [`Choices::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<T>(pub T);

#[poise::async_trait]
impl<T: Choices> poise::SlashArgument for Choice<T> {
    async fn extract(
        _: &serenity::Context,
        _: &serenity::CommandInteraction,
        value: &serenity::ResolvedValue<'_>,
    ) -> Result<Self, poise::SlashArgError> {
        match value {
            serenity::ResolvedValue::String(s) => T::from_choice(s).map(Choice).ok_or_else(|| {
                poise::SlashArgError::new_command_structure_mismatch("not one of the choices")
            }),
            _ => Err(poise::SlashArgError::new_command_structure_mismatch(
                "expected a string choice",
            )),
        }
    }

    fn create(builder: serenity::CreateCommandOption) -> serenity::CreateCommandOption {
        T::CHOICES
            .iter()
            .fold(builder.kind(serenity::CommandOptionType::String), |b, c| {
                b.add_string_choice(c.label(), c.as_str())
            })
    }
}

//! A sample's structured-output constraint, applied from its first token or only once its
//! output holds a marker: R1 reasons freely and its answer after `</think>` follows the
//! grammar, as vLLM's reasoning-aware structured outputs do.

use crate::error::Result;
use crate::structured::Constraint;

pub(super) struct Guide {
    constraint: Constraint,
    /// Until the marker has appeared: the marker, and the output's tail that could begin it.
    until: Option<(String, String)>,
}

impl Guide {
    /// `constraint`, from the start or after `marker`.
    pub fn new(constraint: Constraint, marker: Option<&str>) -> Self {
        Self {
            constraint,
            until: marker.map(|m| (m.to_string(), String::new())),
        }
    }

    /// The constraint, once it applies.
    pub fn active(&mut self) -> Option<&mut Constraint> {
        self.until.is_none().then_some(&mut self.constraint)
    }

    /// Advances past a committed token and its text: the constraint if active, else the
    /// search for the marker (the constraint applies from the next token on).
    pub fn commit(&mut self, token: u32, text: &str) -> Result<()> {
        let Some((marker, tail)) = &mut self.until else {
            return self.constraint.commit(token);
        };
        tail.push_str(text);
        if tail.contains(marker.as_str()) {
            self.until = None;
        } else {
            // Keep the longest tail that could still be the marker's start.
            let mut cut = tail.len().saturating_sub(marker.len());
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
        Ok(())
    }

    /// The output is complete under the constraint.
    pub fn finished(&self) -> bool {
        self.until.is_none() && self.constraint.finished()
    }

    /// An independent copy (another sample of the same prompt).
    pub fn fork(&self) -> Self {
        Self {
            constraint: self.constraint.fork(),
            until: self.until.clone(),
        }
    }
}

//! The `dedup` step: drops a record whose `key` expression gives a value already seen within
//! `within` of its event time (either side, so out-of-order repeats are caught too).
//!
//! Each value's first-seen time is kept in the step's store and purged once stream time is
//! `within` past it; a record older than that horizon cannot be checked and is passed on.

use super::expr::{Expr, Scope};
use super::window::{keys, Timeline};
use super::Rec;
use crate::processor::{Context, ProcessError};

/// The compiled `dedup` step (task-local state included: clone one per task).
#[derive(Debug, Clone)]
pub struct Dedup {
    label: String,
    store: String,
    key: Expr,
    within: i64,
    timeline: Timeline,
}

impl Dedup {
    /// A step with its label (key path), store, key expression and horizon in ms.
    pub fn new(label: String, store: String, key: Expr, within: i64) -> Self {
        Self {
            label,
            store,
            key,
            within,
            timeline: Timeline::default(),
        }
    }

    /// The expression identifying a record.
    pub fn key(&self) -> &Expr {
        &self.key
    }

    /// Drops the in-memory stream time and expiry index; they are reread from the store on the
    /// next record.
    pub fn forget_timeline(&mut self) {
        self.timeline = Timeline::default();
    }

    /// The step's stream time, `None` before its first record.
    pub fn stream_time(&mut self, ctx: &mut Context<'_>) -> Result<Option<i64>, ProcessError> {
        let within = self.within;
        self.timeline
            .now(ctx, &self.store, |seen: &i64| seen.saturating_add(within))
    }

    /// Advances the step's stream time to `t` without a record (a timer), purging the marks
    /// it puts past the horizon.
    pub fn advance_to(&mut self, t: i64, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let within = self.within;
        let (now, expiry) = self.timeline.advance(ctx, &self.store, t, |seen: &i64| {
            seen.saturating_add(within)
        })?;
        let expired = expiry.expired(now);
        let mut store = ctx.store::<i64>(&self.store)?;
        for (_, old) in expired {
            store.delete(&old);
        }
        Ok(())
    }

    /// Passes `rec` to `out` unless it repeats a value seen within the horizon.
    pub fn apply(
        &mut self,
        rec: &Rec,
        scope: &Scope<'_>,
        ctx: &mut Context<'_>,
        out: &mut Vec<Rec>,
    ) -> Result<(), ProcessError> {
        let fail = |reason: String| ProcessError::record(self.label.clone(), reason);
        let id = self.key.eval(scope).map_err(fail)?;
        let id = super::value::to_key(&id)
            .map_err(fail)?
            .ok_or_else(|| fail(format!("dedup key `{}` is null", self.key.text())))?;
        let within = self.within;
        let t = rec.time;
        let entry = keys::entry(&id, 0);
        let (now, expiry) = self.timeline.advance(ctx, &self.store, t, |seen: &i64| {
            seen.saturating_add(within)
        })?;
        let mut store = ctx.store::<i64>(&self.store)?;
        let seen = store.get(&entry)?;
        let keep = seen.is_none_or(|seen| t.abs_diff(seen) >= within.unsigned_abs());
        // Remember the newest time of a kept value, unless it is already past the horizon.
        if keep && t.saturating_add(within) > now {
            if let Some(old) = seen {
                expiry.remove(old.saturating_add(within), &entry);
            }
            store.put(&entry, &t)?;
            expiry.insert(t.saturating_add(within), entry);
        }
        for (_, old) in expiry.expired(now) {
            store.delete(&old);
        }
        if keep {
            out.push(rec.clone());
        } else {
            tracing::debug!(step = %self.label, key = %String::from_utf8_lossy(&id), "duplicate dropped");
        }
        Ok(())
    }
}

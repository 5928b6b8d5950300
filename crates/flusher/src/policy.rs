//! What to do after a failed write, apart from doing it: [`Class::of`] says what a SQLSTATE
//! means for the rows, and [`decide`] turns a failure and the state of the rows in hand (the
//! streak of one unexpected SQLSTATE, whether a sibling was stored, shutdown) into one
//! [`Action`]. Both are pure; `isolate.rs` carries the action out against PostgreSQL and Redis.
//!
//! The rules (docs/contract.md, "Delivery"):
//! - a data error (class 22 or 23, 54000, 54001) is the row's fault: the part is split until the
//!   row is alone, and that row is dead-lettered;
//! - 22P03 (invalid binary representation) means a column's type is not the one written: the
//!   table's fault, and the process stops;
//! - PostgreSQL's own trouble (classes 08, 40, 53, 57 and 25006), or no SQLSTATE at all (no
//!   connection, a timeout), is retried whole with a backoff, never split;
//! - any other SQLSTATE may be tied to one row: retried with a backoff until it comes
//!   [`REFUSED_STREAK`] times in a row, then split as a data error; a row refused alone is
//!   dead-lettered only once a sibling was stored (until then the others go first).
//!
//! A backoff at shutdown leaves the entries pending for another flusher instead.

/// Failures in a row of one part with the same unexpected SQLSTATE after which it is split.
pub const REFUSED_STREAK: u32 = 3;

/// What a SQLSTATE says about a refused write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The row's data (22xxx, 23xxx, 54000, 54001): retrying cannot help.
    Data,
    /// 22P03: binary COPY meets it only when a column's type is not the one its value is
    /// encoded for: the table's fault, not the row's.
    Schema,
    /// PostgreSQL's own trouble, never the row's: connection exceptions (08), transaction
    /// rollbacks such as serialization failures and deadlocks (40), insufficient resources (53),
    /// operator intervention such as a shutdown (57), a read-only transaction (25006, a standby
    /// after a failover).
    ServerTrouble,
    /// Anything else (a chunk that takes no writes, an operator's trigger or constraint):
    /// possibly tied to one row.
    Other,
}

impl Class {
    pub fn of(sqlstate: &str) -> Class {
        let starts = |classes: &[&str]| classes.iter().any(|c| sqlstate.starts_with(c));
        if sqlstate == "22P03" {
            Class::Schema
        } else if starts(&["22", "23"]) || sqlstate == "54000" || sqlstate == "54001" {
            Class::Data
        } else if starts(&["08", "40", "53", "57"]) || sqlstate == "25006" {
            Class::ServerTrouble
        } else {
            Class::Other
        }
    }
}

/// A failed write, as [`decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// Refused for a row's data ([`Class::Data`]).
    Data { sqlstate: &'a str },
    /// Refused with a SQLSTATE of [`Class::Other`].
    Refused { sqlstate: &'a str },
    /// PostgreSQL is down, restarting, silent, or in trouble of its own ([`Class::ServerTrouble`]
    /// or no SQLSTATE).
    Unavailable,
    /// The `events` columns are not what this flusher writes.
    Schema,
}

impl<'a> Failure<'a> {
    /// The failure a SQLSTATE stands for.
    pub fn of_sqlstate(sqlstate: &'a str) -> Self {
        match Class::of(sqlstate) {
            Class::Data => Failure::Data { sqlstate },
            Class::Schema => Failure::Schema,
            Class::ServerTrouble => Failure::Unavailable,
            Class::Other => Failure::Refused { sqlstate },
        }
    }
}

/// The same unexpected SQLSTATE for the part in hand, and how often in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streak {
    pub sqlstate: String,
    pub count: u32,
}

/// The rows in hand when a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Rows in the part that failed.
    pub rows: usize,
    /// Whether a part of the same read committed already.
    pub committed_any: bool,
    /// Whether other parts wait their turn.
    pub others_waiting: bool,
    /// Whether shutdown has come.
    pub stopping: bool,
}

/// What to do with the part that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Halve it; the left half is written next.
    Split,
    /// Its one row goes to the dead letters.
    DeadLetter,
    /// Its one row is written again after the other parts (none of them stored yet).
    RetryAlone,
    /// Wait out the backoff, then write the same part again.
    BackOff,
    /// Shutdown came: leave every entry not settled pending for another flusher.
    LeavePending,
    /// The process must stop (fatal); the entries stay pending for a flusher that fits.
    Stop,
}

/// [`decide`]'s answer: the action, the streak after this failure, and whether the backoff starts
/// over (a pattern was found and acted on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub streak: Option<Streak>,
    pub reset_backoff: bool,
}

/// What to do after `failure` of `part`, given the `streak` before it.
pub fn decide(failure: Failure<'_>, streak: Option<&Streak>, part: Part) -> Decision {
    let keep = |action| Decision {
        action,
        streak: streak.cloned(),
        reset_backoff: false,
    };
    let back_off = if part.stopping {
        Action::LeavePending
    } else {
        Action::BackOff
    };
    match failure {
        Failure::Schema => keep(Action::Stop),
        Failure::Unavailable => keep(back_off),
        Failure::Data { .. } if part.rows == 1 => keep(Action::DeadLetter),
        Failure::Data { .. } => keep(Action::Split),
        Failure::Refused { sqlstate } => {
            let count = match streak {
                Some(s) if s.sqlstate == sqlstate => s.count + 1,
                _ => 1,
            };
            // Not yet a pattern, or nothing of this read could be stored at all: PostgreSQL's
            // side, not this row's.
            let nothing_else = part.rows == 1 && !part.committed_any && !part.others_waiting;
            if count < REFUSED_STREAK || nothing_else {
                return Decision {
                    action: back_off,
                    streak: Some(Streak {
                        sqlstate: sqlstate.to_string(),
                        count,
                    }),
                    reset_backoff: false,
                };
            }
            let action = if part.rows > 1 {
                Action::Split
            } else if !part.committed_any {
                Action::RetryAlone
            } else {
                Action::DeadLetter
            };
            Decision {
                action,
                streak: None,
                reset_backoff: true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState;

    const BATCH: Part = Part {
        rows: 8,
        committed_any: false,
        others_waiting: false,
        stopping: false,
    };
    const ALONE: Part = Part { rows: 1, ..BATCH };

    fn action(sqlstate: &str, part: Part) -> Action {
        decide(Failure::of_sqlstate(sqlstate), None, part).action
    }

    fn streak(sqlstate: &str, count: u32) -> Streak {
        Streak {
            sqlstate: sqlstate.into(),
            count,
        }
    }

    #[test]
    fn classifies_sqlstates() {
        assert_eq!(
            Class::of(SqlState::INVALID_TEXT_REPRESENTATION.code()),
            Class::Data
        );
        assert_eq!(Class::of(SqlState::CHECK_VIOLATION.code()), Class::Data);
        assert_eq!(Class::of(SqlState::NOT_NULL_VIOLATION.code()), Class::Data);
        assert_eq!(
            Class::of(SqlState::PROGRAM_LIMIT_EXCEEDED.code()),
            Class::Data
        );
        assert_ne!(Class::of(SqlState::ADMIN_SHUTDOWN.code()), Class::Data);
        assert_ne!(Class::of(SqlState::UNDEFINED_TABLE.code()), Class::Data);
        assert_ne!(
            Class::of(SqlState::T_R_SERIALIZATION_FAILURE.code()),
            Class::Data
        );
        assert_ne!(
            Class::of(SqlState::TOO_MANY_CONNECTIONS.code()),
            Class::Data
        );
    }

    #[test]
    fn every_class_the_flusher_distinguishes() {
        for (sqlstate, class) in [
            ("22P02", Class::Data),
            ("22001", Class::Data),
            ("23502", Class::Data),
            ("23514", Class::Data),
            ("54000", Class::Data),
            ("54001", Class::Data),
            ("22P03", Class::Schema),
            ("08006", Class::ServerTrouble),
            ("40001", Class::ServerTrouble),
            ("40P01", Class::ServerTrouble),
            ("53100", Class::ServerTrouble),
            ("53300", Class::ServerTrouble),
            ("57P01", Class::ServerTrouble),
            ("25006", Class::ServerTrouble),
            ("25001", Class::Other),
            ("54011", Class::Other),
            ("42P01", Class::Other),
            ("P0001", Class::Other),
            ("55000", Class::Other),
        ] {
            assert_eq!(Class::of(sqlstate), class, "{sqlstate}");
        }
    }

    #[test]
    fn a_data_error_splits_a_batch_and_dead_letters_a_row_alone() {
        for sqlstate in ["22P02", "23514", "54000", "54001"] {
            assert_eq!(action(sqlstate, BATCH), Action::Split, "{sqlstate}");
            assert_eq!(action(sqlstate, ALONE), Action::DeadLetter, "{sqlstate}");
        }
    }

    #[test]
    fn a_data_error_leaves_the_streak_and_the_backoff_alone() {
        let before = streak("P0001", 2);
        let d = decide(Failure::of_sqlstate("22P02"), Some(&before), BATCH);
        assert_eq!(d.streak, Some(before));
        assert!(!d.reset_backoff);
    }

    #[test]
    fn a_data_error_is_acted_on_even_at_shutdown() {
        let stopping = Part {
            stopping: true,
            ..BATCH
        };
        assert_eq!(action("22P02", stopping), Action::Split);
    }

    #[test]
    fn a_mismatched_column_stops_the_process() {
        assert_eq!(action("22P03", BATCH), Action::Stop);
        assert_eq!(action("22P03", ALONE), Action::Stop);
        assert_eq!(decide(Failure::Schema, None, BATCH).action, Action::Stop);
    }

    #[test]
    fn postgres_trouble_backs_off_whole_never_splits() {
        for sqlstate in ["08006", "40001", "53100", "57P01", "25006"] {
            for part in [BATCH, ALONE] {
                let d = decide(Failure::of_sqlstate(sqlstate), None, part);
                assert_eq!(d.action, Action::BackOff, "{sqlstate}");
                assert_eq!(d.streak, None, "{sqlstate}");
            }
        }
        // No SQLSTATE at all: no connection, a timeout.
        assert_eq!(
            decide(Failure::Unavailable, None, BATCH).action,
            Action::BackOff
        );
    }

    #[test]
    fn a_backoff_at_shutdown_leaves_the_entries_pending() {
        let stopping = Part {
            stopping: true,
            ..BATCH
        };
        assert_eq!(action("53100", stopping), Action::LeavePending);
        assert_eq!(action("P0001", stopping), Action::LeavePending);
        assert_eq!(
            decide(Failure::Unavailable, None, stopping).action,
            Action::LeavePending
        );
    }

    #[test]
    fn another_sqlstate_backs_off_until_it_repeats_then_splits() {
        let first = decide(Failure::of_sqlstate("P0001"), None, BATCH);
        assert_eq!(first.action, Action::BackOff);
        assert_eq!(first.streak, Some(streak("P0001", 1)));
        let second = decide(Failure::of_sqlstate("P0001"), first.streak.as_ref(), BATCH);
        assert_eq!(second.action, Action::BackOff);
        assert_eq!(second.streak, Some(streak("P0001", 2)));
        let third = decide(Failure::of_sqlstate("P0001"), second.streak.as_ref(), BATCH);
        assert_eq!(
            third,
            Decision {
                action: Action::Split,
                streak: None,
                reset_backoff: true,
            }
        );
    }

    #[test]
    fn another_sqlstate_starts_the_streak_over() {
        let d = decide(
            Failure::of_sqlstate("55000"),
            Some(&streak("P0001", 2)),
            BATCH,
        );
        assert_eq!(d.action, Action::BackOff);
        assert_eq!(d.streak, Some(streak("55000", 1)));
    }

    #[test]
    fn a_row_refused_alone_goes_behind_its_siblings_until_one_is_stored() {
        let waiting = Part {
            others_waiting: true,
            ..ALONE
        };
        let d = decide(
            Failure::of_sqlstate("P0001"),
            Some(&streak("P0001", 2)),
            waiting,
        );
        assert_eq!(d.action, Action::RetryAlone);
        assert_eq!(d.streak, None);
        assert!(d.reset_backoff);
    }

    #[test]
    fn a_row_refused_alone_after_a_sibling_was_stored_is_dead_lettered() {
        let after = Part {
            committed_any: true,
            ..ALONE
        };
        let d = decide(
            Failure::of_sqlstate("P0001"),
            Some(&streak("P0001", 2)),
            after,
        );
        assert_eq!(d.action, Action::DeadLetter);
    }

    #[test]
    fn a_row_refused_with_nothing_else_of_its_read_is_postgres_side() {
        // Alone, nothing stored, nothing waiting: never condemned, however often refused.
        let d = decide(
            Failure::of_sqlstate("P0001"),
            Some(&streak("P0001", 9)),
            ALONE,
        );
        assert_eq!(d.action, Action::BackOff);
        assert_eq!(d.streak, Some(streak("P0001", 10)));
    }
}

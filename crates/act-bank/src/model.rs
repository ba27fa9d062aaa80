//! The bank's states: accounts (`account-{n}`), one audit trail per account
//! (`audit-{n}`) and the running totals (`totals`).
//!
//! Accounts hold the invariant (a balance never below zero). Audit and totals
//! are written only by reactions and are idempotent by construction: each
//! remembers the last source event it recorded and skips anything at or
//! before it, so a redelivered or replayed event writes nothing twice.

use act::{Action, Invariant, State};
use serde::{Deserialize, Serialize};

/// The stream of account `n`.
pub fn account(n: usize) -> String {
    format!("account-{n}")
}

/// The account number of an `account-{n}` stream.
pub fn account_number(stream: &str) -> Option<&str> {
    stream.strip_prefix("account-")
}

/// A bank account.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// True once opened.
    pub open: bool,
    /// Current balance (never negative).
    pub balance: i64,
}

/// What happens to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
pub enum AccountEvent {
    /// The account was opened.
    Opened {},
    /// Money came in.
    Deposited {
        /// Amount, positive.
        amount: i64,
        /// Test knob: reaction handlers fail their first `fail` attempts.
        #[serde(default, skip_serializing_if = "is_zero")]
        fail: u32,
        /// Test knob: the audit handler always fails on this event.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        poison: bool,
    },
    /// Money went out.
    Withdrawn {
        /// Amount, positive.
        amount: i64,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a client asks of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountAction {
    /// Open it (opening an open account changes nothing).
    Open,
    /// Deposit `amount` (positive).
    Deposit {
        /// Amount.
        amount: i64,
        /// See [`AccountEvent::Deposited`].
        fail: u32,
        /// See [`AccountEvent::Deposited`].
        poison: bool,
    },
    /// Withdraw `amount` if the balance allows.
    Withdraw {
        /// Amount.
        amount: i64,
    },
}

impl Action for AccountAction {
    fn name(&self) -> &str {
        match self {
            AccountAction::Open => "open",
            AccountAction::Deposit { .. } => "deposit",
            AccountAction::Withdraw { .. } => "withdraw",
        }
    }
}

impl State for Account {
    type Event = AccountEvent;
    type Action = AccountAction;
    const SNAPSHOT_EVERY: Option<u64> = Some(50);

    fn apply(&mut self, e: &AccountEvent) {
        match e {
            AccountEvent::Opened {} => self.open = true,
            AccountEvent::Deposited { amount, .. } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }

    fn decide(&self, a: &AccountAction) -> Result<Vec<AccountEvent>, Invariant> {
        match a {
            AccountAction::Open if self.open => Ok(vec![]),
            AccountAction::Open => Ok(vec![AccountEvent::Opened {}]),
            _ if !self.open => Err(Invariant::new("the account is not open")),
            AccountAction::Deposit { amount, .. } | AccountAction::Withdraw { amount }
                if *amount <= 0 =>
            {
                Err(Invariant::new(format!(
                    "amount must be positive, got {amount}"
                )))
            }
            AccountAction::Deposit {
                amount,
                fail,
                poison,
            } => Ok(vec![AccountEvent::Deposited {
                amount: *amount,
                fail: *fail,
                poison: *poison,
            }]),
            AccountAction::Withdraw { amount } if *amount > self.balance => {
                Err(Invariant::new(format!(
                    "insufficient funds: balance {}, withdrawal {amount}",
                    self.balance
                )))
            }
            AccountAction::Withdraw { amount } => {
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
        }
    }
}

/// The audit trail of one account: one `Recorded` per source event.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// The last source event recorded.
    pub last: i64,
    /// Receipts so far.
    pub count: u64,
}

/// Audit events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
pub enum AuditEvent {
    /// A source event was recorded.
    Recorded {
        /// The source event id.
        source: i64,
    },
}

/// Audit actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditAction {
    /// Record a source event (skipped when already recorded).
    Record {
        /// The source event id.
        source: i64,
    },
}

impl Action for AuditAction {
    fn name(&self) -> &str {
        "record"
    }
}

impl State for Audit {
    type Event = AuditEvent;
    type Action = AuditAction;
    const SNAPSHOT_EVERY: Option<u64> = Some(50);

    fn apply(&mut self, e: &AuditEvent) {
        let AuditEvent::Recorded { source } = e;
        self.last = *source;
        self.count += 1;
    }

    fn decide(&self, a: &AuditAction) -> Result<Vec<AuditEvent>, Invariant> {
        let AuditAction::Record { source } = a;
        if *source <= self.last {
            return Ok(vec![]);
        }
        Ok(vec![AuditEvent::Recorded { source: *source }])
    }
}

/// The bank's running total of every deposit and withdrawal.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// The last source event counted.
    pub last: i64,
    /// Sum of deposits minus withdrawals.
    pub total: i64,
}

/// Totals events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
pub enum TotalsEvent {
    /// A source event moved the total.
    Totaled {
        /// The source event id.
        source: i64,
        /// The total after it.
        total: i64,
    },
}

/// Totals actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TotalsAction {
    /// Add a signed amount from a source event (skipped when already counted).
    Add {
        /// The source event id.
        source: i64,
        /// Deposit positive, withdrawal negative.
        amount: i64,
    },
}

impl Action for TotalsAction {
    fn name(&self) -> &str {
        "add"
    }
}

impl State for Totals {
    type Event = TotalsEvent;
    type Action = TotalsAction;
    const SNAPSHOT_EVERY: Option<u64> = Some(50);

    fn apply(&mut self, e: &TotalsEvent) {
        let TotalsEvent::Totaled { source, total } = e;
        self.last = *source;
        self.total = *total;
    }

    fn decide(&self, a: &TotalsAction) -> Result<Vec<TotalsEvent>, Invariant> {
        let TotalsAction::Add { source, amount } = a;
        if *source <= self.last {
            return Ok(vec![]);
        }
        Ok(vec![TotalsEvent::Totaled {
            source: *source,
            total: self.total + amount,
        }])
    }
}

/// The bank's ledger: one posting per deposit and withdrawal, in source
/// order. Written by the `ledger` reaction, which version 2 of the demo adds
/// to a running bank (it replays the history first).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// The last source event posted.
    pub last: i64,
}

/// Ledger events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", content = "data")]
pub enum LedgerEvent {
    /// A source event was posted.
    Posted {
        /// The source event id.
        source: i64,
    },
}

/// Ledger actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerAction {
    /// Post a source event (skipped when already posted).
    Post {
        /// The source event id.
        source: i64,
    },
}

impl Action for LedgerAction {
    fn name(&self) -> &str {
        "post"
    }
}

impl State for Ledger {
    type Event = LedgerEvent;
    type Action = LedgerAction;
    const SNAPSHOT_EVERY: Option<u64> = Some(50);

    fn apply(&mut self, e: &LedgerEvent) {
        let LedgerEvent::Posted { source } = e;
        self.last = *source;
    }

    fn decide(&self, a: &LedgerAction) -> Result<Vec<LedgerEvent>, Invariant> {
        let LedgerAction::Post { source } = a;
        if *source <= self.last {
            return Ok(vec![]);
        }
        Ok(vec![LedgerEvent::Posted { source: *source }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_balance_never_goes_below_zero() {
        let mut a = Account::default();
        a.apply(&AccountEvent::Opened {});
        a.apply(&AccountEvent::Deposited {
            amount: 10,
            fail: 0,
            poison: false,
        });
        let err = a
            .decide(&AccountAction::Withdraw { amount: 11 })
            .unwrap_err();
        assert_eq!(err.0, "insufficient funds: balance 10, withdrawal 11");
        assert_eq!(
            a.decide(&AccountAction::Withdraw { amount: 10 }).unwrap(),
            vec![AccountEvent::Withdrawn { amount: 10 }]
        );
    }

    #[test]
    fn opening_twice_is_not_an_error_and_a_closed_account_refuses_money() {
        let mut a = Account::default();
        assert!(a
            .decide(&AccountAction::Deposit {
                amount: 1,
                fail: 0,
                poison: false
            })
            .is_err());
        a.apply(&AccountEvent::Opened {});
        assert_eq!(a.decide(&AccountAction::Open).unwrap(), vec![]);
    }

    #[test]
    fn receipts_skip_sources_already_seen() {
        let mut audit = Audit::default();
        audit.apply(&AuditEvent::Recorded { source: 7 });
        assert!(audit
            .decide(&AuditAction::Record { source: 7 })
            .unwrap()
            .is_empty());
        assert!(audit
            .decide(&AuditAction::Record { source: 3 })
            .unwrap()
            .is_empty());
        assert_eq!(
            audit
                .decide(&AuditAction::Record { source: 9 })
                .unwrap()
                .len(),
            1
        );
        let mut totals = Totals::default();
        totals.apply(&TotalsEvent::Totaled {
            source: 5,
            total: 40,
        });
        assert_eq!(
            totals
                .decide(&TotalsAction::Add {
                    source: 6,
                    amount: -15
                })
                .unwrap(),
            vec![TotalsEvent::Totaled {
                source: 6,
                total: 25
            }]
        );
    }

    #[test]
    fn test_knobs_are_left_out_of_ordinary_deposits() {
        let m = act::state::encode(&AccountEvent::Deposited {
            amount: 5,
            fail: 0,
            poison: false,
        })
        .unwrap();
        assert_eq!(m.data, serde_json::json!({"amount": 5}));
    }
}

//! What each event triggers. Adding a side effect means adding an impl here
//! (or a new protocol), never touching the code that posts the events.

use crate::events::{
    EmailVerified, PasswordResetRequested, SubscriptionStarted, UserCreated, UserDeleted,
};
use eventbus::{
    Notifiable, Notification, Track, Trackable, Webhook, Webhookable, json, protocol, register,
};
use serde::Serialize;

/// A line in the compliance audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub subject: String,
    pub action: &'static str,
    pub detail: String,
}

/// Events that compliance wants in the audit log. Declared here, in the
/// application, with the same attribute as the built-in protocols.
#[protocol]
pub trait Auditable {
    fn audit(&self) -> AuditRecord;
}

#[register]
impl Trackable for UserCreated {
    fn track(&self) -> Track {
        Track::new(self, self.user_id).property("signup_source", self.signup_source.as_str())
    }
}

#[register]
impl Notifiable for UserCreated {
    fn notifications(&self) -> Vec<Notification> {
        vec![Notification::email(&self.email, "welcome").data("user_id", self.user_id)]
    }
}

#[register]
impl Trackable for EmailVerified {
    fn track(&self) -> Track {
        Track::new(self, self.user_id)
    }
}

#[register]
impl Trackable for SubscriptionStarted {
    fn track(&self) -> Track {
        Track::new(self, self.user_id)
            .property("plan", self.plan.as_str())
            .property("monthly_cents", self.monthly_cents)
    }
}

#[register]
impl Webhookable for SubscriptionStarted {
    fn webhook(&self) -> Webhook {
        Webhook::new(
            "subscription.started",
            json!({ "plan": self.plan, "monthly_cents": self.monthly_cents }),
        )
        .for_account(&self.account_id)
    }
}

#[register]
impl Auditable for SubscriptionStarted {
    fn audit(&self) -> AuditRecord {
        AuditRecord {
            subject: format!("user:{}", self.user_id),
            action: "subscription.start",
            detail: format!("{} at {} cents a month", self.plan, self.monthly_cents),
        }
    }
}

#[register]
impl Notifiable for PasswordResetRequested {
    fn notifications(&self) -> Vec<Notification> {
        vec![Notification::email(&self.email, "password-reset").data("user_id", self.user_id)]
    }
}

#[register]
impl Auditable for PasswordResetRequested {
    fn audit(&self) -> AuditRecord {
        AuditRecord {
            subject: format!("user:{}", self.user_id),
            action: "password.reset_request",
            detail: String::new(),
        }
    }
}

#[register]
impl Auditable for UserDeleted {
    fn audit(&self) -> AuditRecord {
        AuditRecord {
            subject: format!("user:{}", self.user_id),
            action: "user.delete",
            detail: self.reason.clone().unwrap_or_default(),
        }
    }
}

#[register]
impl Webhookable for UserDeleted {
    fn webhook(&self) -> Webhook {
        Webhook::new("user.deleted", json!({ "user_id": self.user_id }))
    }
}

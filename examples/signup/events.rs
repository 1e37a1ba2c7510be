//! The signup domain's events: what the service says after it has done its
//! work. Nothing here knows about analytics, email or webhooks.

use eventbus::event;

/// A user signed up with an email address.
#[event(name = "user.created", version = 1)]
pub struct UserCreated {
    pub user_id: u64,
    pub email: String,
    /// Where the signup came from: `web`, `ios`, `invite`.
    pub signup_source: String,
}

/// A user proved they own their email address.
#[event]
pub struct EmailVerified {
    pub user_id: u64,
    pub email: String,
}

/// A user started a paid plan.
#[event(name = "subscription.started")]
pub struct SubscriptionStarted {
    pub user_id: u64,
    pub account_id: String,
    pub plan: String,
    pub monthly_cents: u64,
}

/// A user asked for a password reset link.
#[event(name = "password.reset_requested")]
pub struct PasswordResetRequested {
    pub user_id: u64,
    pub email: String,
}

/// A user closed their account.
#[event(name = "user.deleted")]
pub struct UserDeleted {
    pub user_id: u64,
    pub reason: Option<String>,
}

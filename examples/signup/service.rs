//! The service's business logic. Each operation does its work, then posts
//! what happened; it knows nothing about the side effects.

use crate::events::{
    EmailVerified, PasswordResetRequested, SubscriptionStarted, UserCreated, UserDeleted,
};
use eventbus::{Bus, Event, NotifyError};

pub struct Accounts {
    bus: Bus,
}

impl Accounts {
    pub fn new(bus: Bus) -> Self {
        Accounts { bus }
    }

    pub async fn sign_up(
        &self,
        user_id: u64,
        email: &str,
        source: &str,
    ) -> Result<UserCreated, NotifyError> {
        // ... insert the user row here ...
        let created = UserCreated::new(user_id, email.to_owned(), source.to_owned())
            .with_actor(format!("user:{user_id}"));
        self.bus.notify(created.clone()).await?;
        Ok(created)
    }

    pub async fn verify_email(&self, signup: &UserCreated) -> Result<(), NotifyError> {
        let verified = EmailVerified::new(signup.user_id, signup.email.clone()).caused_by(signup);
        self.bus.notify(verified).await
    }

    pub async fn subscribe(
        &self,
        signup: &UserCreated,
        plan: &str,
        cents: u64,
    ) -> Result<(), NotifyError> {
        // ... charge the card here ...
        let started = SubscriptionStarted::new(
            signup.user_id,
            format!("acct_{}", signup.user_id),
            plan.to_owned(),
            cents,
        )
        .caused_by(signup);
        self.bus.notify(started).await
    }

    pub async fn forgot_password(&self, user_id: u64, email: &str) -> Result<(), NotifyError> {
        self.bus
            .notify(PasswordResetRequested::new(user_id, email.to_owned()))
            .await
    }

    pub async fn delete(&self, user_id: u64, reason: Option<&str>) -> Result<(), NotifyError> {
        self.bus
            .notify(UserDeleted::new(user_id, reason.map(str::to_owned)))
            .await
    }
}

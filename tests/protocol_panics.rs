//! `testing::exercise` catches a protocol that panics and names it, instead
//! of stopping at the first broken pair.

use eventbus::{Track, Trackable, event, register};

#[event]
pub struct RefundIssued {
    pub cents: i64,
}

#[register]
impl Trackable for RefundIssued {
    fn track(&self) -> Track {
        assert!(self.cents >= 0, "negative refund of {} cents", self.cents);
        Track::new(self, "billing")
    }
}

#[test]
fn a_panicking_protocol_is_reported_with_its_message() {
    let ok = eventbus::testing::exercise([RefundIssued::new(5).into()]).unwrap();
    assert_eq!(ok.calls, 1);

    let err = eventbus::testing::exercise([RefundIssued::new(-5).into()]).unwrap_err();
    assert_eq!(
        err.failures,
        [eventbus::testing::Failure::Panicked {
            event: "refund.issued".into(),
            protocol: "Trackable".into(),
            message: "negative refund of -5 cents".into(),
        }]
    );
}

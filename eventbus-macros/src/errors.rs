//! Every error of one macro call, collected so they are reported at once,
//! as serde's `Ctxt` does.

use syn::Error;

/// Folds errors together as serde's `Ctxt` does.
#[derive(Default)]
pub(crate) struct Errors(Option<Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    /// Ends with `err` added to everything collected so far.
    pub(crate) fn fail(mut self, err: Error) -> Error {
        self.push(err);
        self.0.expect("an error was just pushed")
    }

    pub(crate) fn finish(self) -> Result<(), Error> {
        match self.0 {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

//! An error as operators read it: one log line with its chain of causes, and an exit code.

use std::error::Error;
use std::process::ExitCode;

/// `error: cause: cause …`, skipping a cause whose text the message already ends with (an error
/// that prints its source in its own message).
pub fn chain(e: &dyn Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Logs a failure with its causes and turns the outcome into the exit code: 0, 2 for usage
/// errors (flags that do not fit together, as clap's own refusals), 1 otherwise.
pub fn exit_code<E: Error>(result: Result<(), E>, is_usage: impl Fn(&E) -> bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{}", chain(&e));
            if is_usage(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_are_appended_once() {
        let e = E("a", Some(Box::new(E("b", Some(Box::new(E("c", None)))))));
        assert_eq!(chain(&e), "a: b: c");
        let echoing = E("bind: in use", Some(Box::new(E("in use", None))));
        assert_eq!(chain(&echoing), "bind: in use");
    }
}

//! Connection URLs as errors and logs show them: never with a password.

/// `url` with its password, if any, replaced by `***`: in the user info of
/// a URL, in a `password` query parameter, and in a keyword/value
/// connection string (`host=db password=secret`).
pub(crate) fn redact(url: &str) -> String {
    // A list of servers, as NATS takes: each one on its own.
    if url.contains(',') && url.contains("://") {
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_parameter(url, ' ');
    };
    let query = rest.find('?').unwrap_or(rest.len());
    // The user info ends at the last `@` before the query: a password may
    // hold `/` and `@`.
    let rest = match rest[..query].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let hidden = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                // To NATS a lone user info is a token.
                None if is_nats(scheme) => "***".to_owned(),
                None => userinfo.to_owned(),
            };
            format!("{hidden}{}", &rest[at..])
        }
        None => rest.to_owned(),
    };
    format!("{scheme}://{}", redact_parameter(&rest, '&'))
}

fn is_nats(scheme: &str) -> bool {
    matches!(scheme.trim(), "nats" | "tls" | "ws" | "wss")
}

/// `text` with the value of every `password=` parameter, up to the next
/// `separator`, replaced by `***`.
fn redact_parameter(text: &str, separator: char) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("password=") {
        let value = found + "password=".len();
        out.push_str(&rest[..value]);
        out.push_str("***");
        let tail = &rest[value..];
        let end = if let Some(quoted) = tail.strip_prefix('\'') {
            quoted.find('\'').map_or(tail.len(), |close| close + 2)
        } else {
            tail.find(separator).unwrap_or(tail.len())
        };
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://app:s3cr%40t@db.internal:5432/app"),
            "postgres://app:***@db.internal:5432/app"
        );
        assert_eq!(
            redact("postgres://app:p@ss@db/app"),
            "postgres://app:***@db/app"
        );
        assert_eq!(redact("postgres://app@db/app"), "postgres://app@db/app");
        assert_eq!(redact("postgres://db/app"), "postgres://db/app");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(
            redact("nats://app:s3cret@127.0.0.1:4222"),
            "nats://app:***@127.0.0.1:4222"
        );
        assert_eq!(
            redact("nats://t0ken@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(
            redact("nats://a:one@h1:4222,nats://b:two@h2:4222"),
            "nats://a:***@h1:4222,nats://b:***@h2:4222"
        );
        assert_eq!(
            redact("postgres://app:pa/ss@db/app"),
            "postgres://app:***@db/app"
        );
        assert_eq!(
            redact("postgres://db/app?user=app&password=s3cret&sslmode=disable"),
            "postgres://db/app?user=app&password=***&sslmode=disable"
        );
        assert_eq!(
            redact("host=db user=app password=s3cret dbname=app"),
            "host=db user=app password=*** dbname=app"
        );
        assert_eq!(
            redact("host=db password='a b c' dbname=app"),
            "host=db password=*** dbname=app"
        );
    }
}

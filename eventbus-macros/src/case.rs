//! The default event name: `UserCreated` becomes `user.created`.

/// Splits a type name into lowercase words joined by dots. A run of capitals
/// is one word (`HTTPRequestSent` is `http.request.sent`), and digits stay
/// with the word before them (`Oauth2Linked` is `oauth2.linked`).
pub(crate) fn dotted(ident: &str) -> String {
    let chars: Vec<char> = ident.trim_start_matches("r#").chars().collect();
    let mut out = String::with_capacity(chars.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            if !out.is_empty() && !out.ends_with('.') {
                out.push('.');
            }
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let boundary =
                prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower);
            if boundary && !out.is_empty() && !out.ends_with('.') {
                out.push('.');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dotted;

    #[test]
    fn words_become_dotted_segments() {
        assert_eq!(dotted("UserCreated"), "user.created");
        assert_eq!(dotted("HTTPRequestSent"), "http.request.sent");
        assert_eq!(dotted("Oauth2Linked"), "oauth2.linked");
        assert_eq!(dotted("Paid"), "paid");
        assert_eq!(dotted("user_created"), "user.created");
        assert_eq!(dotted("ABC"), "abc");
    }
}

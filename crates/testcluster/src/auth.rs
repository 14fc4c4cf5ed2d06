//! Tokens in requests (§2): keepstore collects them from `Authorization`
//! (`OAuth2`/`Bearer`), HTTP Basic password, `?api_token=` and the
//! `arvados_api_token` cookie, in that order; the first one is used for signatures.

use http::HeaderMap;

/// The token of an `Authorization: OAuth2|Bearer <tok>` header (keepproxy and the
/// controller accept only this form, and the `api_token` parameter for the controller).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let tok = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("OAuth2 "))?
        .trim();
    (!tok.is_empty()).then(|| tok.to_owned())
}

fn query_param(query: Option<&str>, name: &str) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

/// The value of the first `name=` query parameter.
pub(crate) fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query_param(query, name).into_iter().next()
}

/// `%XX` escapes and `+` (as a space) decoded.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    // Standard and URL-safe alphabets, padding optional.
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Every token in the request, in keepstore's order (§2).
pub(crate) fn keepstore_tokens(headers: &HeaderMap, query: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(t) = bearer(headers) {
        out.push(t);
    }
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(b) = v.strip_prefix("Basic ") {
            if let Some(pw) = base64_decode(b.trim())
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|s| s.split_once(':').map(|(_, p)| p.to_owned()))
            {
                out.push(pw);
            }
        }
    }
    out.extend(query_param(query, "api_token"));
    for c in headers.get_all(http::header::COOKIE) {
        for kv in c.to_str().unwrap_or("").split(';') {
            if let Some(v) = kv.trim().strip_prefix("arvados_api_token=") {
                if let Some(t) = base64_decode(v).and_then(|d| String::from_utf8(d).ok()) {
                    out.push(t);
                }
            }
        }
    }
    out
}

/// The token the controller sees: `Authorization` or `api_token`/`oauth_token`.
pub(crate) fn api_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    bearer(headers)
        .or_else(|| query_value(query, "api_token"))
        .or_else(|| query_value(query, "oauth_token"))
}

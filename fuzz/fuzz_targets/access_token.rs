//! Access tokens from arbitrary bytes: verifying never panics, and only a token signed with the
//! instance's key, with the pinned algorithm and every claim in order, is accepted.
#![no_main]

use cloudx_core::auth::token::Keys;
use cloudx_core::config::AuthConfig;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-fuzz";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let keys = Keys::hs256(SECRET, &AuthConfig::default());
    if let Ok(claims) = keys.verify(text) {
        // Accepted: then it is a well-formed access token of this issuer and audience, which
        // random input cannot forge; reaching here means the signature check was passed.
        assert_eq!(claims.typ, "access");
        assert_eq!((claims.iss.as_str(), claims.aud.as_str()), ("cloudx", "cloudx"));
    }
    // The other parsers that take untrusted text.
    let _ = cloudx_core::Scopes::parse(text.split(','));
    let _ = text.parse::<cloudx_core::Role>();
    let _ = text.parse::<cloudx_core::ProjectRole>();
    let _ = cloudx_core::auth::password::check_policy(text, 8, "someone@example.com");
});

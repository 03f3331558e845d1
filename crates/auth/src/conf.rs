//! Renders the nats-server `authorization` block: one nkey user per role with its rights.

use std::fmt::Write as _;

use crate::rights::{rights, Rights};
use crate::role::Role;

/// The text of `auth.conf`, for `include` from a server config. `users` pairs each role
/// with its public key (`U…`).
pub fn render(users: &[(Role, String)]) -> String {
    let mut out = String::new();
    out.push_str(
        "# Written by `shop auth init`: one nkey user per role, rights computed from the\n\
         # event contract (crates/auth). Regenerate it rather than edit it by hand.\n\
         authorization {\n  users = [\n",
    );
    for (role, public_key) in users {
        user(&mut out, *role, public_key, &rights(*role));
    }
    out.push_str("  ]\n}\n");
    out
}

fn user(out: &mut String, role: Role, public_key: &str, rights: &Rights) {
    let _ = writeln!(out, "    # {role}");
    let _ = writeln!(out, "    {{");
    let _ = writeln!(out, "      nkey: {}", quote(public_key));
    out.push_str("      permissions: {\n");
    out.push_str("        publish: {\n");
    list(out, "allow", rights.publish.iter());
    if !rights.publish_deny.is_empty() {
        list(out, "deny", rights.publish_deny.iter());
    }
    out.push_str("        }\n");
    out.push_str("        subscribe: {\n");
    list(out, "allow", rights.subscribe.iter());
    out.push_str("        }\n");
    if rights.allow_responses {
        out.push_str("        allow_responses: true\n");
    }
    out.push_str("      }\n    }\n");
}

fn list<'a>(out: &mut String, name: &str, subjects: impl Iterator<Item = &'a String>) {
    let _ = writeln!(out, "          {name}: [");
    for subject in subjects {
        let _ = writeln!(out, "            {}", quote(subject));
    }
    out.push_str("          ]\n");
}

/// Double-quoted, so `$JS…` and `$SRV…` are strings to the config parser rather than
/// variable references.
fn quote(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_one_user_with_quoted_subjects() {
        let users: Vec<(Role, String)> = Role::ALL
            .iter()
            .map(|r| (*r, format!("U{}", r.name().to_uppercase())))
            .collect();
        let text = render(&users);
        assert_eq!(text.matches("nkey: ").count(), Role::ALL.len());
        assert!(text.contains("nkey: \"UPAYMENT\""));
        assert!(text.contains("\"$SRV.*.payment\""));
        assert!(!text.contains(" $"), "an unquoted $ would be a variable");
        assert_eq!(text.matches("allow_responses: true").count(), 3);
    }
}

//! `apt_source`: a deb822 source, /etc/apt/sources.list.d/<name>.sources, signed by a
//! key from the role's files/, installed as /etc/apt/keyrings/<name>.gpg (or .asc when
//! armored). It expands into those two files, which plan in the sources phase.

use std::path::PathBuf;

use marked_yaml::Spanned;
use serde::Deserialize;

use crate::error::Result;
use crate::resources::file::File;
use crate::resources::Expand;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    name: Spanned<String>,
    uris: Vec<Spanned<String>>,
    suites: Vec<Spanned<String>>,
    #[serde(default)]
    components: Vec<Spanned<String>>,
    #[serde(default)]
    architectures: Vec<Spanned<String>>,
    key: Spanned<String>,
}

/// The key file and the .sources file.
pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Result<Option<Vec<File>>> {
    let before = x.problems();
    // One word each: whitespace or a line break would add words or fields to the
    // .sources file (`Trusted: yes`).
    let list = |x: &mut dyn Expand, items: &[Spanned<String>]| -> Vec<String> {
        items
            .iter()
            .filter_map(|i| {
                let word = x.text(i)?;
                if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    x.problem(
                        i.span(),
                        format!(
                            "`{}` is not one word: an apt source's uris, suites, components and architectures have no spaces or control characters",
                            crate::resources::checks::shown(&word)
                        ),
                    );
                }
                Some(word)
            })
            .collect()
    };
    let name = x.text(&s.name);
    let uris = list(x, &s.uris);
    let suites = list(x, &s.suites);
    let components = list(x, &s.components);
    let architectures = list(x, &s.architectures);
    if let Some(n) = &name {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            x.problem(
                s.name.span(),
                format!("`{n}` is not a source name: letters, digits, - _ ."),
            );
        }
    }
    if uris.is_empty() && x.problems() == before {
        x.problem(
            s.name.span(),
            "an apt source needs at least one of `uris`".into(),
        );
    }
    // A signing key is small: read whole.
    let key = x.source(&s.key)?.map(|c| c.read_all()).transpose()?;
    let (Some(name), Some(key), true) = (name, key, x.problems() == before) else {
        return Ok(None);
    };
    let armored = key.starts_with(b"-----BEGIN PGP");
    let key_path = PathBuf::from(format!(
        "/etc/apt/keyrings/{name}.{}",
        if armored { "asc" } else { "gpg" }
    ));
    let mut sources = format!(
        "# Managed by fleet-agent (role {})\nTypes: deb\nURIs: {}\nSuites: {}\n",
        x.role(),
        uris.join(" "),
        suites.join(" ")
    );
    if !components.is_empty() {
        sources.push_str(&format!("Components: {}\n", components.join(" ")));
    }
    if !architectures.is_empty() {
        sources.push_str(&format!("Architectures: {}\n", architectures.join(" ")));
    }
    sources.push_str(&format!("Signed-By: {}\n", key_path.display()));
    Ok(Some(vec![
        File::plain(key_path, key),
        File::plain(
            PathBuf::from(format!("/etc/apt/sources.list.d/{name}.sources")),
            sources.into_bytes(),
        ),
    ]))
}

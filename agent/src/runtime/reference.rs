//! Image references (`registry/repository:tag@digest`) parsed by hand into oci-client's
//! [`Reference`], instead of by `Reference::from_str`.
//!
//! Why not `from_str`: oci-spec checks a reference against one large regular expression,
//! compiled on first use and kept in a static for the life of the process. Compiling it
//! took ~22 MiB of heap at its peak and left ~7 MiB allocated for good (heaptrack of one
//! pull, BENCHMARKS.md "Cell agent memory"): five times the agent's whole idle heap, for
//! parsing one short string per container. This module checks the same grammar
//! (distribution's `reference` package) with a few loops and builds the `Reference` through
//! its constructors, so the result is the one `from_str` gives, field for field; the unit
//! tests hold the two side by side.
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [ domain "/" ] path-component [ "/" path-component ]*
//! domain           := domain-component [ "." domain-component ]* [ ":" [0-9]+ ]
//! domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//! path-component   := [a-z0-9]+ [ separator [a-z0-9]+ ]*     separator := "." | "_" | "__" | "-"+
//! tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest           := algorithm ":" [0-9a-fA-F]{32,}
//! algorithm        := [A-Za-z][A-Za-z0-9]* [ [-_+.] [A-Za-z][A-Za-z0-9]* ]*
//! ```
//!
//! Then as `from_str` does: the first component is the registry only if the name has
//! another and it contains `.` or `:` or is `localhost` (else Docker Hub, `docker.io`, with
//! `library/` before a one-component repository; `index.docker.io` is `docker.io`); no tag
//! and no digest means `latest`; a repository is at most 255 characters; a digest is
//! sha256, sha384 or sha512 with as many hex digits as that hash has. One difference: a
//! tag here is ASCII, where oci-spec's `\w` also takes other Unicode letters, which no
//! registry's tag grammar allows.

use oci_client::Reference;

/// The longest repository name a reference may have.
const REPOSITORY_MAX: usize = 255;
/// The longest tag.
const TAG_MAX: usize = 128;
/// Docker Hub, as a reference names it, and its legacy name.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";

/// Why an image name is not a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("repository name must have at least one component")]
    Empty,
    #[error("invalid reference format")]
    Format,
    #[error("repository name must not be more than {REPOSITORY_MAX} characters")]
    TooLong,
    #[error("unsupported digest algorithm")]
    DigestAlgorithm,
    #[error("invalid checksum digest length")]
    DigestLength,
}

/// Parse `image` as a reference.
pub fn parse(image: &str) -> Result<Reference, ReferenceError> {
    if image.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    // A ':' after the last '/' starts the tag; one before it is a registry's port.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if !is_name(name) || !tag.is_none_or(is_tag) || !digest.is_none_or(is_digest) {
        return Err(ReferenceError::Format);
    }
    let (registry, repository) = split_registry(name);
    if repository.len() > REPOSITORY_MAX {
        return Err(ReferenceError::TooLong);
    }
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').ok_or(ReferenceError::Format)?;
        let wanted = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(ReferenceError::DigestAlgorithm),
        };
        if hex.len() != wanted {
            return Err(ReferenceError::DigestLength);
        }
    }
    let tag = tag.map(str::to_string);
    let digest = digest.map(str::to_string);
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag, digest)
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or_else(|| "latest".into()))
        }
    })
}

/// `name`: path components, the first of which may instead be a domain when more follow.
fn is_name(name: &str) -> bool {
    let mut components = name.split('/');
    let first = components.next().unwrap_or_default();
    let rest: Vec<&str> = components.collect();
    rest.iter().all(|c| is_path_component(c))
        && (is_path_component(first) || (!rest.is_empty() && is_domain(first)))
}

/// `[a-z0-9]+` runs joined by one separator each: `.`, `_`, `__` or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alphanumeric) || !bytes.last().is_some_and(alphanumeric) {
        return false;
    }
    bytes
        .split(alphanumeric)
        .filter(|separator| !separator.is_empty())
        .all(|separator| {
            matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|&b| b == b'-')
        })
}

/// `host[:port]`, the host dot-separated labels of letters, digits and inner hyphens.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let is_label = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.split('.').all(is_label)
        && port.is_none_or(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= TAG_MAX
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let is_algorithm_component = |part: &str| {
        part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && part.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    algorithm
        .split(['-', '_', '+', '.'])
        .all(is_algorithm_component)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The registry and the repository of a valid name.
fn split_registry(name: &str) -> (String, String) {
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest.to_string())
        }
        _ => (DOCKER_HUB, name.to_string()),
    };
    let registry = if registry == DOCKER_HUB_LEGACY {
        DOCKER_HUB
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    (registry.to_string(), repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Good and bad references; each must parse as oci-spec's `from_str` parses it.
    const CASES: &[&str] = &[
        "busybox",
        "busybox:1.36",
        "library/busybox:latest",
        "docker.io/busybox",
        "index.docker.io/busybox",
        "index.docker.io/foo/bar:1",
        "docker.io/library/hello-world:latest",
        "localhost/foo",
        "localhost:5000/foo/bar:v1",
        "127.0.0.1:5000/cellet-test/busybox:1",
        "10.253.0.1:5000/cellet-bench/httpd:1",
        "test.com:tag",
        "test.com:5000",
        "test:5000/repo",
        "test:5000/repo:tag",
        "lowercase:Uppercase",
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "xn--n3h.com/myimage:xn--n3h.com",
        "foo_bar.com:8080",
        "foo/foo_bar.com:8080",
        "opensuse/leap:15.3",
        "a/b__c/d---e/f.g_h",
        "Example.COM/repo",
        "test:5000/repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "test:5000/repo:tag@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "busybox@sha512:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "",
        ":justtag",
        "@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "repo@sha256:ffffffffffffffffffffffffffffffffff",
        "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "validname@sha256:fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffg",
        "Uppercase:tag",
        "test:5000/Uppercase/lowercase:tag",
        "aa/asdf$$^/aa",
        "a_/b",
        "a/_b",
        "a..b",
        "a___b",
        "a-.b",
        "-a.com/b",
        "a-.com/b",
        "a.com:/b",
        "a.com:50x0/b",
        "a.com:5000",
        "a.com:5000/",
        "/a",
        "a//b",
        "a:b:c",
        "a:-tag",
        "a:.tag",
        "a:_tag",
        "repo:tag@",
        "repo@sha256",
        "repo@1sha:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "repo@sha256+b64u:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff@x",
    ];

    #[test]
    fn references_parse_as_oci_spec_parses_them() {
        for case in CASES {
            let ours = parse(case);
            let theirs = case.parse::<Reference>();
            match (&ours, &theirs) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{case:?}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{case:?}: ours {ours:?}, oci-spec's {theirs:?}"),
            }
        }
    }

    #[test]
    fn long_names_and_tags_are_refused() {
        let long_repository = format!("a.com/{}", "a".repeat(REPOSITORY_MAX + 1));
        assert_eq!(parse(&long_repository), Err(ReferenceError::TooLong));
        let long_tag = format!("busybox:{}", "t".repeat(TAG_MAX + 1));
        assert_eq!(parse(&long_tag), Err(ReferenceError::Format));
        for case in [&long_repository, &long_tag] {
            assert!(case.parse::<Reference>().is_err(), "{case}");
        }
    }
}

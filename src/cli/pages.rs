//! Lists, page by page: `--limit N` shows N rows, `--all` fetches every page, and a
//! listing that stops short says how many rows are left and prints the command that
//! shows the next page (the same flags with its `--cursor`), so nothing is cut off
//! silently and a cursor works as printed.

use clap::Args;
use hyper::Method;
use serde_json::{json, Value};

use super::client::{query, Client};

/// Rows shown when `--limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// The daemon's largest page, used to fetch `--all` and to count what is left.
const PAGE: u32 = 1000;
/// Rows counted past a page before the hint says "more than N".
const COUNT_CAP: usize = 10_000;

/// The paging flags of every list command.
#[derive(Args, Debug, Clone, Default)]
pub struct ListOpts {
    /// Show at most N rows (1..1000) [default: 50].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000), conflicts_with = "all")]
    pub limit: Option<u32>,
    /// Show every row, fetching page after page.
    #[arg(long)]
    pub all: bool,
    /// Start after this point of a previous listing (the hint under a table prints the
    /// whole command).
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    pub cursor: Option<String>,
}

impl ListOpts {
    fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }
}

/// How many rows follow the ones shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    Exactly(usize),
    MoreThan(usize),
}

/// The rows to show, what follows them, and where the next page starts.
pub struct Page {
    pub items: Vec<Value>,
    pub left: Option<Left>,
    pub next_cursor: Option<String>,
}

impl Page {
    /// The answer as one list, for `--json`: the rows shown and the cursor of the rest.
    pub fn to_json(&self) -> Value {
        json!({"object": "list", "data": self.items, "next_cursor": self.next_cursor})
    }
}

async fn one_page(
    c: &Client,
    path: &str,
    filters: &[(&str, Option<String>)],
    limit: u32,
    cursor: Option<&str>,
) -> Result<(Vec<Value>, Option<String>), String> {
    let mut pairs: Vec<(&str, Option<String>)> = filters.to_vec();
    pairs.push(("limit", Some(limit.to_string())));
    pairs.push(("cursor", cursor.map(str::to_string)));
    let v = c
        .call(Method::GET, &format!("{path}{}", query(&pairs)), None)
        .await?;
    let items = v
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| format!("the daemon's answer to {path} is not a list"))?;
    let next = v
        .get("next_cursor")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((items, next))
}

/// A paged list of the daemon's (`limit` and `cursor` query parameters,
/// `next_cursor` in the answer) as the flags ask.
pub async fn fetch(
    c: &Client,
    path: &str,
    filters: &[(&str, Option<String>)],
    opts: &ListOpts,
) -> Result<Page, String> {
    if opts.all {
        let mut items = Vec::new();
        let mut cursor = opts.cursor.clone();
        loop {
            let (mut page, next) = one_page(c, path, filters, PAGE, cursor.as_deref()).await?;
            items.append(&mut page);
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        return Ok(Page {
            items,
            left: None,
            next_cursor: None,
        });
    }
    let (items, next) = one_page(c, path, filters, opts.limit(), opts.cursor.as_deref()).await?;
    let Some(next) = next else {
        return Ok(Page {
            items,
            left: None,
            next_cursor: None,
        });
    };
    // Count what is left, page by page, up to a cap.
    let mut left = 0;
    let mut cursor = Some(next.clone());
    while let Some(cur) = cursor.take() {
        if left >= COUNT_CAP {
            return Ok(Page {
                items,
                left: Some(Left::MoreThan(left)),
                next_cursor: Some(next),
            });
        }
        let (page, n) = one_page(c, path, filters, PAGE, Some(&cur)).await?;
        left += page.len();
        cursor = n;
    }
    Ok(Page {
        items,
        left: Some(Left::Exactly(left)),
        next_cursor: Some(next),
    })
}

/// A list the daemon answers whole (accounts, keys, providers), cut to the flags.
pub fn cut(mut items: Vec<Value>, opts: &ListOpts) -> Result<Page, String> {
    if opts.cursor.is_some() {
        return Err("this list has no pages: drop --cursor (use --all)".into());
    }
    let limit = opts.limit() as usize;
    let left = (!opts.all && items.len() > limit).then(|| Left::Exactly(items.len() - limit));
    if left.is_some() {
        items.truncate(limit);
    }
    Ok(Page {
        items,
        left,
        next_cursor: None,
    })
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_word(w: &str) -> String {
    let plain = !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// This command line with its `--cursor` (if any) replaced by `cursor`.
pub fn next_command(args: &[String], cursor: &str) -> String {
    let mut out = vec!["spotd".to_string()];
    let mut skip = false;
    for a in args.iter().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        if a == "--cursor" {
            skip = true;
            continue;
        }
        if a.starts_with("--cursor=") {
            continue;
        }
        out.push(shell_word(a));
    }
    out.push("--cursor".into());
    out.push(shell_word(cursor));
    out.join(" ")
}

/// The line under a table that stopped short, or `None` when it shows everything.
pub fn hint(page: &Page, args: &[String]) -> Option<String> {
    let left = page.left?;
    let n = match left {
        Left::Exactly(n) => n.to_string(),
        Left::MoreThan(n) => format!("{n}+"),
    };
    Some(match &page.next_cursor {
        Some(c) => format!(
            "{n} more — use --all, or the next page: {}",
            next_command(args, c)
        ),
        None => format!("{n} more — use --all"),
    })
}

/// Prints a page: the table (or `empty` when there are no rows) and the hint.
pub fn print(page: &Page, table: impl Fn(&[Value]) -> String, empty: &str) {
    if page.items.is_empty() {
        println!("{empty}");
    } else {
        print!("{}", table(&page.items));
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(h) = hint(page, &args) {
        println!("{h}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_next_page_command_repeats_the_flags_with_the_new_cursor() {
        let a = args(&[
            "/usr/bin/spotd",
            "offers",
            "--gpu",
            "RTX 4090",
            "--limit",
            "5",
        ]);
        assert_eq!(
            next_command(&a, "ab12"),
            "spotd offers --gpu 'RTX 4090' --limit 5 --cursor ab12"
        );
        let a = args(&["spotd", "credits", "--ledger", "--cursor", "900", "--json"]);
        assert_eq!(
            next_command(&a, "850"),
            "spotd credits --ledger --json --cursor 850"
        );
        let a = args(&["spotd", "rentals", "--cursor=1.rnt_a"]);
        assert_eq!(
            next_command(&a, "0.rnt_b"),
            "spotd rentals --cursor 0.rnt_b"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn hints_say_how_many_are_left() {
        let page = |left, next: Option<&str>| Page {
            items: vec![],
            left,
            next_cursor: next.map(str::to_string),
        };
        let a = args(&["spotd", "credits", "--ledger"]);
        assert_eq!(hint(&page(None, None), &a), None);
        assert_eq!(
            hint(&page(Some(Left::Exactly(1090)), Some("1090")), &a).unwrap(),
            "1090 more — use --all, or the next page: spotd credits --ledger --cursor 1090"
        );
        assert_eq!(
            hint(&page(Some(Left::MoreThan(10000)), Some("x")), &a).unwrap(),
            "10000+ more — use --all, or the next page: spotd credits --ledger --cursor x"
        );
        assert_eq!(
            hint(&page(Some(Left::Exactly(3)), None), &a).unwrap(),
            "3 more — use --all"
        );
    }

    #[test]
    fn whole_lists_are_cut_to_the_limit() {
        let items: Vec<Value> = (0..60).map(|i| json!({ "id": i })).collect();
        let p = cut(items.clone(), &ListOpts::default()).unwrap();
        assert_eq!((p.items.len(), p.left), (50, Some(Left::Exactly(10))));
        let all = ListOpts {
            all: true,
            ..ListOpts::default()
        };
        assert_eq!(cut(items.clone(), &all).unwrap().items.len(), 60);
        let cursor = ListOpts {
            cursor: Some("x".into()),
            ..ListOpts::default()
        };
        assert!(cut(items, &cursor).is_err());
    }
}

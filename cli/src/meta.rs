//! `txn` about itself: shell completions and man pages, both made from
//! the same clap definition that parses the arguments (so they cannot
//! drift from it), printed to stdout for the user to put where their shell
//! or `man` looks.

use clap::Command;
use clap_complete::Shell;

/// `txn completions SHELL`: the completion script for SHELL.
pub fn completions(mut cmd: Command, shell: Shell) -> u8 {
    let name = cmd.get_name().to_string();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    print(&buf)
}

/// `txn man [SUBCOMMAND]`: the roff page of `txn`, or of one subcommand
/// (`txn-get(1)`); exit 2 for a subcommand that does not exist.
pub fn man(mut cmd: Command, sub: Option<&str>) -> u8 {
    // Building fills in the subcommands' display names (txn-get) and
    // synopses (txn get) that the pages print.
    cmd.build();
    let page = match sub {
        None => cmd,
        Some(name) => match cmd.find_subcommand(name) {
            Some(s) => s.clone(),
            None => {
                let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
                eprintln!(
                    "txn man: no subcommand {name:?}; one of: {}",
                    names.join(", ")
                );
                return 2;
            }
        },
    };
    let mut buf = Vec::new();
    if let Err(e) = clap_mangen::Man::new(page).render(&mut buf) {
        eprintln!("txn man: {e}");
        return 6;
    }
    print(&buf)
}

fn print(bytes: &[u8]) -> u8 {
    crate::output::write_out(format_args!("{}", String::from_utf8_lossy(bytes)));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> Command {
        Command::new("txn")
            .version("1")
            .about("test tool")
            .subcommand(
                Command::new("get")
                    .about("Read a key")
                    .arg(clap::Arg::new("key")),
            )
    }

    fn render(sub: Option<&str>) -> String {
        let mut c = cmd();
        c.build();
        let page = match sub {
            None => c,
            Some(n) => c.find_subcommand(n).unwrap().clone(),
        };
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn pages_name_the_command_and_subcommand() {
        let top = render(None);
        assert!(top.starts_with(".ie"), "{top}");
        assert!(top.contains("txn"), "{top}");
        assert!(top.contains("get"), "{top}");
        let get = render(Some("get"));
        assert!(get.contains("txn\\-get"), "{get}");
        assert!(get.contains("Read a key"), "{get}");
    }

    #[test]
    fn an_unknown_subcommand_is_a_usage_error() {
        assert_eq!(man(cmd(), Some("frobnicate")), 2);
    }
}

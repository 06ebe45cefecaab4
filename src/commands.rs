/*!
Chat commands the gateway answers itself, never sending them to the agent.

They act at once, even while a turn runs: `/stop` must be able to stop one, and `/new`
to throw it away. Parsing is forgiving the way chat clients need: case-insensitive, and
surrounding space ignored.

`/new@some_bot` is addressed to a bot by name (Telegram clients append it in groups
with several bots). The platform knows its own name and strips it (`/new@my_bot`
arrives as `/new`), so a name still attached here is another bot's: that message is
not a command of ours, or one user's `/new@otherbot` would reset our session too.
*/

/// A recognised command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `/new` or `/reset`: a fresh session.
    New,
    /// `/stop`: abort the running turn.
    Stop,
    /// `/status`: the session and the gateway.
    Status,
    /// `/help`
    Help,
    /// `/queue <text>`: answer `text` after the running turn, never interrupting it.
    Queue(String),
}

/// What `/help` says.
pub const HELP: &str = "\
Commands:
/new or /reset – start a fresh session
/stop – stop the answer being written
/status – this session and the gateway
/queue <text> – answer <text> after the current answer
/help – this list";

/// The command in `text`, if it is one. Unknown `/words` are not commands: they go to
/// the agent like any other text.
pub fn parse(text: &str) -> Option<Command> {
    let text = text.trim();
    let rest = text.strip_prefix('/')?;
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if word.contains('@') {
        return None; // Addressed to another bot.
    }
    let word = word.to_ascii_lowercase();
    let args = args.trim();
    match word.as_str() {
        "new" | "reset" => Some(Command::New),
        "stop" => Some(Command::Stop),
        "status" => Some(Command::Status),
        "help" => Some(Command::Help),
        "queue" if !args.is_empty() => Some(Command::Queue(args.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_commands_forgivingly() {
        assert_eq!(parse("/new"), Some(Command::New));
        assert_eq!(parse("  /RESET  "), Some(Command::New));
        assert_eq!(parse("/status"), Some(Command::Status));
        assert_eq!(parse("/help"), Some(Command::Help));
        assert_eq!(parse("/queue  then this "), Some(Command::Queue("then this".into())));
    }

    #[test]
    fn everything_else_goes_to_the_agent() {
        for text in ["hello", "/queue", "/unknown", "new", "a /stop in the middle", "/", "/queue@x"] {
            assert_eq!(parse(text), None, "{text}");
        }
    }

    #[test]
    fn a_command_addressed_to_another_bot_is_not_a_command() {
        for text in ["/new@otherbot", "/STOP@other_bot", "/queue@other_bot later", "/help@"] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}

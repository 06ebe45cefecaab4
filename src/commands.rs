/*!
Chat commands the gateway answers itself, never sending them to the agent.

They act at once, even while a turn runs: `/stop` must be able to stop one, and `/new`
to throw it away. Parsing is forgiving the way chat clients need: case-insensitive, and
`/new@my_bot` (Telegram appends the bot's name in groups) is `/new`.
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
    let word = word.split('@').next().unwrap_or(word).to_ascii_lowercase();
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
        assert_eq!(parse("/stop@switchboard_bot"), Some(Command::Stop));
        assert_eq!(parse("/status"), Some(Command::Status));
        assert_eq!(parse("/help"), Some(Command::Help));
        assert_eq!(parse("/queue  then this "), Some(Command::Queue("then this".into())));
    }

    #[test]
    fn everything_else_goes_to_the_agent() {
        for text in ["hello", "/queue", "/unknown", "new", "a /stop in the middle", "/"] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}

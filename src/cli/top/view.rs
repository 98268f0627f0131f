//! Drawing a [`Screen`] with ratatui: a summary line, a status line, the workers and their
//! tasks. Pure: the same screen always draws the same cells (tested on ratatui's TestBackend).

use std::time::Duration;

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use super::model::{Screen, Source};

/// A rate as whole records per second, `-` when not known yet.
fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{:.0}", r))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Draws `screen` over the whole frame. `interval` is the refresh period, shown in the help.
pub fn draw(frame: &mut Frame<'_>, screen: &Screen, interval: Duration) {
    let [summary, status, workers_area, tasks_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(screen.workers.len().max(1) as u16 + 3),
        Constraint::Min(3),
    ])
    .areas(frame.area());

    let group = screen.group.as_deref().unwrap_or("?");
    let mut spans = vec![
        Span::from("tributary top").bold(),
        Span::from(format!("  group {group}  via {}", screen.address)),
    ];
    if screen.error.is_none() {
        spans.push(Span::from(format!(
            "  workers {}  tasks {}  records/s {}  lag {}  dead letters {}",
            screen.workers.len(),
            screen.tasks.iter().filter(|t| t.state != "standby").count(),
            rate(screen.total_rate()),
            screen.total_lag(),
            screen.total_dead_letters(),
        )));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), summary);

    let every = format!("refreshed every {} ms; q quits", interval.as_millis());
    let status_line = match (&screen.error, screen.source) {
        (Some(e), _) => Line::from(vec![
            Span::from(format!("error: {e}")).red().bold(),
            Span::from(format!("  (retrying; {every})")),
        ]),
        (None, Some(Source::OneWorker)) => Line::from(vec![
            Span::from(format!(
                "{} has no /cluster (an older worker): showing this worker only",
                screen.address
            ))
            .yellow(),
            Span::from(format!("  ({every})")),
        ]),
        _ => Line::from(every),
    };
    frame.render_widget(Paragraph::new(status_line), status);

    let header_style = Style::default().add_modifier(Modifier::BOLD);
    let worker_rows = screen.workers.iter().map(|w| {
        let status = match &w.error {
            None => Span::from("ok").green(),
            Some(e) => Span::from(format!("unreachable: {e}")).red(),
        };
        Row::new(vec![
            Line::from(w.address.clone()),
            Line::from(w.members.to_string()),
            Line::from(w.partitions.to_string()),
            Line::from(w.active.to_string()),
            Line::from(w.standby.to_string()),
            Line::from(w.restoring.to_string()),
            Line::from(rate(w.rate)),
            Line::from(opt(w.lag)),
            Line::from(opt(w.dead_letters)),
            Line::from(opt(w.restored)),
            Line::from(status),
        ])
    });
    let workers = Table::new(
        worker_rows,
        [
            Constraint::Length(21),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new([
            "WORKER",
            "MEMBERS",
            "PARTITIONS",
            "ACTIVE",
            "STANDBY",
            "RESTORING",
            "RECORDS/S",
            "LAG",
            "DEAD LETTERS",
            "RESTORED",
            "STATUS",
        ])
        .style(header_style),
    )
    .block(Block::bordered().title(" Workers "));
    frame.render_widget(workers, workers_area);

    let task_rows = screen.tasks.iter().map(|t| {
        let state = match t.state.as_str() {
            "running" => Span::from(t.state.clone()).green(),
            "restoring" => Span::from(t.state.clone()).yellow(),
            _ => Span::from(t.state.clone()).cyan(),
        };
        let restore = match t.restore {
            Some((left, Some(done))) => format!("{left} left, {done}% done"),
            Some((left, None)) => format!("{left} left"),
            None => String::new(),
        };
        Row::new(vec![
            Line::from(t.worker.clone()),
            Line::from(t.id.clone()),
            Line::from(state),
            Line::from(rate(t.rate)),
            Line::from(t.lag.to_string()),
            Line::from(t.queued.to_string()),
            Line::from(t.member.to_string()),
            Line::from(restore),
        ])
    });
    let tasks = Table::new(
        task_rows,
        [
            Constraint::Length(21),
            Constraint::Length(24),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new([
            "WORKER",
            "TASK",
            "STATE",
            "RECORDS/S",
            "LAG",
            "QUEUED",
            "MEMBER",
            "RESTORE",
        ])
        .style(header_style),
    )
    .block(Block::bordered().title(" Tasks "));
    frame.render_widget(tasks, tasks_area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::top::model::{TaskRow, WorkerRow};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    /// The screen's text, one string per terminal row.
    fn render(screen: &Screen) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(160, 20)).expect("terminal");
        terminal
            .draw(|f| draw(f, screen, Duration::from_secs(1)))
            .expect("draw");
        let buffer = terminal.backend().buffer();
        let width = buffer.area.width as usize;
        buffer
            .content
            .chunks(width)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
            .collect()
    }

    fn line_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{}", lines.join("\n")))
    }

    fn worker(address: &str, error: Option<&str>) -> WorkerRow {
        WorkerRow {
            address: address.into(),
            members: 1,
            partitions: 2,
            active: 2,
            standby: 1,
            restoring: 1,
            rate: error.is_none().then_some(1500.4),
            lag: Some(12),
            dead_letters: error.is_none().then_some(3),
            restored: error.is_none().then_some(9000),
            error: error.map(str::to_string),
        }
    }

    fn cluster_screen() -> Screen {
        Screen {
            address: "127.0.0.1:9464".into(),
            group: Some("clicks".into()),
            source: Some(Source::Cluster),
            error: None,
            workers: vec![
                worker("127.0.0.1:9464", None),
                worker("127.0.0.1:9465", Some("connection refused")),
            ],
            tasks: vec![
                TaskRow {
                    worker: "127.0.0.1:9464".into(),
                    id: "totals_0".into(),
                    state: "running".into(),
                    rate: Some(1500.4),
                    lag: 12,
                    restore: None,
                    queued: 40,
                    member: 0,
                },
                TaskRow {
                    worker: "127.0.0.1:9464".into(),
                    id: "totals_1".into(),
                    state: "restoring".into(),
                    rate: None,
                    lag: 750,
                    restore: Some((750, Some(25))),
                    queued: 0,
                    member: 0,
                },
                TaskRow {
                    worker: "127.0.0.1:9464".into(),
                    id: "totals_2".into(),
                    state: "standby".into(),
                    rate: None,
                    lag: 0,
                    restore: None,
                    queued: 0,
                    member: 0,
                },
            ],
        }
    }

    #[test]
    fn the_group_its_workers_and_their_tasks_are_on_screen() {
        let lines = render(&cluster_screen());
        let summary = &lines[0];
        assert!(summary.contains("group clicks"), "{summary}");
        assert!(summary.contains("workers 2"), "{summary}");
        assert!(summary.contains("tasks 2"), "{summary}");
        assert!(summary.contains("records/s 1500"), "{summary}");
        assert!(summary.contains("lag 24"), "{summary}");
        assert!(summary.contains("dead letters 3"), "{summary}");
        assert!(lines[1].contains("q quits"), "{}", lines[1]);

        let w1 = line_with(&lines, "│127.0.0.1:9464 ");
        let cells: Vec<&str> = w1.split(['│', ' ']).filter(|c| !c.is_empty()).collect();
        // │ address members partitions active standby restoring records/s lag dead restored
        //   status │
        assert_eq!(
            cells[..11],
            [
                "127.0.0.1:9464",
                "1",
                "2",
                "2",
                "1",
                "1",
                "1500",
                "12",
                "3",
                "9000",
                "ok"
            ]
        );
        let w2 = line_with(&lines, "unreachable");
        assert!(w2.contains("127.0.0.1:9465"), "{w2}");
        assert!(w2.contains("unreachable: connection refused"), "{w2}");

        let running = line_with(&lines, "totals_0");
        assert!(running.contains("running"), "{running}");
        assert!(running.contains("1500"), "{running}");
        let restoring = line_with(&lines, "totals_1");
        assert!(restoring.contains("restoring"), "{restoring}");
        assert!(restoring.contains("750 left, 25% done"), "{restoring}");
        assert!(line_with(&lines, "totals_2").contains("standby"));
    }

    #[test]
    fn a_worker_without_cluster_is_said_to_be_shown_alone() {
        let mut screen = cluster_screen();
        screen.source = Some(Source::OneWorker);
        screen.workers.truncate(1);
        let lines = render(&screen);
        assert!(
            lines[1].contains("127.0.0.1:9464 has no /cluster"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("showing this worker only"));
    }

    #[test]
    fn an_unreachable_address_is_an_error_line_not_a_crash() {
        let screen = Screen {
            address: "127.0.0.1:1".into(),
            group: None,
            source: None,
            error: Some("127.0.0.1:1/cluster: connection refused".into()),
            workers: Vec::new(),
            tasks: Vec::new(),
        };
        let lines = render(&screen);
        assert!(
            lines[1].contains("error: 127.0.0.1:1/cluster: connection refused"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("retrying"), "{}", lines[1]);
        // Too small a terminal must not panic either.
        let mut tiny = Terminal::new(TestBackend::new(10, 3)).expect("terminal");
        tiny.draw(|f| draw(f, &cluster_screen(), Duration::from_secs(1)))
            .expect("draw");
    }
}

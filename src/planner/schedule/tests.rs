use super::*;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn next(expression: &str, after: &str) -> DateTime<Utc> {
    CronSchedule::parse(expression).unwrap().next(at(after)).unwrap()
}

#[test]
fn next_is_strictly_after_and_on_a_whole_minute() {
    assert_eq!(next("0 9 * * *", "2025-06-02T08:59:30Z"), at("2025-06-02T09:00:00Z"));
    assert_eq!(next("0 9 * * *", "2025-06-02T09:00:00Z"), at("2025-06-03T09:00:00Z"));
    assert_eq!(next("*/15 * * * *", "2025-06-02T09:00:01Z"), at("2025-06-02T09:15:00Z"));
}

#[test]
fn the_zone_prefix_moves_the_firing() {
    // 20:00 in Chicago (CST, UTC-6) on Jan 1st is 02:00Z on Jan 2nd.
    assert_eq!(
        next("CRON_TZ=America/Chicago 0 20 * * *", "2021-01-01T02:00:05Z"),
        at("2021-01-02T02:00:00Z")
    );
}

#[test]
fn spring_forward_fires_once_in_local_time() {
    // New York springs forward on 2025-03-09: 09:00 EDT is 13:00Z, not 14:00Z.
    assert_eq!(
        next("CRON_TZ=America/New_York 0 9 * * *", "2025-03-08T15:00:00Z"),
        at("2025-03-09T13:00:00Z")
    );
    // 02:30 does not exist that day: it runs once, at the first instant after the gap.
    let schedule = CronSchedule::parse("CRON_TZ=America/New_York 30 2 * * *").unwrap();
    let first = schedule.next(at("2025-03-09T05:00:00Z")).unwrap();
    assert_eq!(first, at("2025-03-09T07:00:00Z"));
    let second = schedule.next(first).unwrap();
    assert_eq!(second, at("2025-03-10T06:30:00Z"));
}

#[test]
fn fall_back_fires_once_in_the_repeated_hour() {
    // New York falls back on 2025-11-02: 01:30 happens twice (05:30Z and 06:30Z).
    let schedule = CronSchedule::parse("CRON_TZ=America/New_York 30 1 * * *").unwrap();
    let first = schedule.next(at("2025-11-02T04:00:00Z")).unwrap();
    assert_eq!(first, at("2025-11-02T05:30:00Z"));
    assert_eq!(schedule.next(first).unwrap(), at("2025-11-03T06:30:00Z"));
}

#[test]
fn weekdays_count_from_sunday_zero_and_names_work() {
    // 2025-06-02 is a Monday.
    assert_eq!(next("0 9 * * 1-5", "2025-05-31T00:00:00Z"), at("2025-06-02T09:00:00Z"));
    assert_eq!(next("0 9 * * SUN", "2025-06-02T00:00:00Z"), at("2025-06-08T09:00:00Z"));
    assert_eq!(next("0 9 1 FEB *", "2025-06-02T00:00:00Z"), at("2026-02-01T09:00:00Z"));
    assert_eq!(next("0 0 * * 0", "2025-06-02T00:00:00Z"), at("2025-06-08T00:00:00Z"));
}

#[test]
fn restricted_day_of_month_and_week_match_either() {
    // The 15th or any Monday: from Tuesday 2025-06-03 the next is Monday the 9th.
    assert_eq!(next("0 0 15 * 1", "2025-06-03T00:00:00Z"), at("2025-06-09T00:00:00Z"));
    // `*/1` and `?` count as `*`: only the weekday restricts.
    assert_eq!(next("0 0 */1 * 1", "2025-06-03T00:00:00Z"), at("2025-06-09T00:00:00Z"));
    assert_eq!(next("0 0 ? * 1", "2025-06-03T00:00:00Z"), at("2025-06-09T00:00:00Z"));
    // `*/2` is a restriction: odd days or Mondays; the 3rd is odd, so the 5th is next.
    assert_eq!(next("0 0 */2 * 1", "2025-06-03T00:00:00Z"), at("2025-06-05T00:00:00Z"));
}

#[test]
fn the_dialect_rejects_what_croner_would_accept() {
    let reject = |expression: &str| CronSchedule::parse(expression).unwrap_err();
    assert!(matches!(reject("0 9 * * 7"), CronError::Field { field: "day-of-week", .. }));
    assert!(matches!(reject("0 9 L * *"), CronError::Field { field: "day-of-month", .. }));
    assert!(matches!(reject("0 9 * * 1#2"), CronError::Field { field: "day-of-week", .. }));
    assert!(matches!(reject("0 9 15W * *"), CronError::Field { field: "day-of-month", .. }));
    assert!(matches!(reject("0 0 9 * * *"), CronError::FieldCount(6)));
    assert!(matches!(reject("@daily"), CronError::FieldCount(1)));
    assert!(matches!(reject("60 * * * *"), CronError::Field { field: "minute", .. }));
    assert!(matches!(reject("* 24 * * *"), CronError::Field { field: "hour", .. }));
    assert!(matches!(reject("* * 0 * *"), CronError::Field { field: "day-of-month", .. }));
    assert!(matches!(reject("* * * 13 *"), CronError::Field { field: "month", .. }));
    assert!(matches!(reject("* 5-1 * * *"), CronError::Field { field: "hour", .. }));
    assert!(matches!(reject("*/0 * * * *"), CronError::Field { field: "minute", .. }));
    assert!(matches!(reject("CRON_TZ=Local 0 9 * * *"), CronError::UnknownZone(_)));
    assert!(matches!(reject("CRON_TZ=Mars/Olympus 0 9 * * *"), CronError::UnknownZone(_)));
    assert!(matches!(reject(""), CronError::Empty));
    let error = reject("0 9 * * 7");
    assert_eq!(error.to_string(), "day-of-week field \"7\": 7 is out of range 0-6");
}

#[test]
fn weekly_schedules_need_every_day_of_month_and_month() {
    assert!(CronSchedule::parse_weekly("CRON_TZ=Europe/Berlin 30 8 * * 1-5").is_ok());
    assert!(matches!(
        CronSchedule::parse_weekly("0 9 1 * *"),
        Err(CronError::NotWeekly { field: "day-of-month", .. })
    ));
    assert!(matches!(
        CronSchedule::parse_weekly("0 9 * 6 *"),
        Err(CronError::NotWeekly { field: "month", .. })
    ));
}

#[test]
fn a_time_range_covers_whole_hours_in_its_zone() {
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let range = CronSchedule::parse_time_range("* 9-18 * * 1-5", berlin).unwrap();
    // Monday 2025-06-02, CEST = UTC+2.
    assert!(range.contains(at("2025-06-02T07:00:00Z")));
    assert!(range.contains(at("2025-06-02T16:59:59Z")));
    assert!(!range.contains(at("2025-06-02T17:00:00Z")));
    assert!(!range.contains(at("2025-06-02T06:59:59Z")));
    // Saturday.
    assert!(!range.contains(at("2025-06-07T10:00:00Z")));
    assert!(matches!(
        CronSchedule::parse_time_range("0 9-18 * * *", berlin),
        Err(CronError::NotTimeRange(_))
    ));
}

#[test]
fn overlap_checks_months_then_days_then_hours() {
    assert_eq!(schedules_overlap("* 8-12 * * 1-5", "* 13-18 * * 1-5"), Ok(false));
    assert_eq!(schedules_overlap("* 8-12 * * 1-5", "* 12-18 * * 1-5"), Ok(true));
    assert_eq!(schedules_overlap("* 8-18 * * 1-5", "* 8-18 * * 0,6"), Ok(false));
    assert_eq!(schedules_overlap("* * * 1-6 *", "* * * 7-12 *"), Ok(false));
    // Days: both day fields restricted on both sides: either intersecting is an overlap.
    assert_eq!(schedules_overlap("* 9 1 * 1", "* 9 2 * 1"), Ok(true));
    assert_eq!(schedules_overlap("* 9 1 * 1", "* 9 2 * 2"), Ok(false));
    // One day-of-month is `*`: compare weekdays.
    assert_eq!(schedules_overlap("* 9 * * 1", "* 9 5 * 2"), Ok(false));
    // Months disjoint: the later (bad) hour field is never parsed.
    assert_eq!(schedules_overlap("* x * 1 *", "* 9 * 2 *"), Ok(false));
    assert!(schedules_overlap("* */2 * * *", "* 9 * * *").is_err());
    assert!(schedules_overlap("* 9 * * MON", "* 9 * * 2").is_err());
    assert!(schedules_overlap("CRON_TZ=UTC * 9 * * 1", "* 9 * * 2").is_err());
    assert!(check_no_overlap(&["* 8-12 * * 1-5", "* 13-18 * * 1-5", "* * * * 0,6"]).is_ok());
    assert!(check_no_overlap(&["* 8-12 * * 1-5", "* 13-18 * * 1-5", "* 12 * * 1"]).is_err());
}

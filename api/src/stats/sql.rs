//! A query's SQL text and its bound values, built together.
//!
//! Every value a caller gives reaches ClickHouse as a bound parameter. With
//! `format!` and a separate run of `.bind` calls, the `?`s of the text and
//! the values must be kept in the same order by hand, across optional
//! clauses; here each `?` is pushed with its value, so they cannot drift.

/// A value bound to one `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(v.to_string())
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(v)
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

/// SQL text and, in order, the value of each of its `?`s.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Sql {
    text: String,
    params: Vec<Param>,
}

impl Sql {
    /// Start with `text`, which holds no placeholder.
    pub(crate) fn new(text: &str) -> Self {
        let mut s = Sql::default();
        s.push(text);
        s
    }

    /// Append `text`, which holds no placeholder (names and keywords this
    /// service writes, never a caller's value).
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        assert!(!text.contains('?'), "a placeholder without its value: {text}");
        self.text.push_str(text);
        self
    }

    /// Append `text`, whose one `?` stands for `value`.
    pub(crate) fn push_bind(&mut self, text: &str, value: impl Into<Param>) -> &mut Self {
        assert_eq!(text.matches('?').count(), 1, "one placeholder per value: {text}");
        self.text.push_str(text);
        self.params.push(value.into());
        self
    }

    /// Append `(?, ?, ...)`, a placeholder per value (an `IN` list).
    pub(crate) fn push_list<V: Into<Param> + Clone>(&mut self, values: &[V]) -> &mut Self {
        self.text.push('(');
        for (i, v) in values.iter().enumerate() {
            self.text.push_str(if i == 0 { "?" } else { ", ?" });
            self.params.push(v.clone().into());
        }
        self.text.push(')');
        self
    }

    /// The query on `client`, every value bound.
    pub(crate) fn query(&self, client: &clickhouse::Client) -> clickhouse::query::Query {
        self.params.iter().fold(client.query(&self.text), |q, p| match p {
            Param::Text(v) => q.bind(v.as_str()),
            Param::Int(v) => q.bind(*v),
        })
    }

    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    #[cfg(test)]
    pub(crate) fn params(&self) -> &[Param] {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_placeholder_is_pushed_with_its_value_in_order() {
        let mut s = Sql::new("SELECT x FROM t WHERE a >= ");
        s.push_bind("toDateTime(?)", 5).push(" AND k IN ").push_list(&["a", "b'; DROP TABLE t"]).push_bind(" AND c = ?", "z");
        assert_eq!(s.text(), "SELECT x FROM t WHERE a >= toDateTime(?) AND k IN (?, ?) AND c = ?");
        let expected: Vec<Param> = vec![5.into(), "a".into(), "b'; DROP TABLE t".into(), "z".into()];
        assert_eq!(s.params(), &expected[..]);
        assert_eq!(s.text().matches('?').count(), s.params().len());
    }

    #[test]
    #[should_panic(expected = "a placeholder without its value")]
    fn text_with_a_placeholder_and_no_value_is_refused() {
        Sql::new("SELECT ?");
    }

    #[test]
    #[should_panic(expected = "one placeholder per value")]
    fn a_value_for_two_placeholders_is_refused() {
        Sql::new("SELECT 1").push_bind(" WHERE a = ? AND b = ?", 1);
    }
}

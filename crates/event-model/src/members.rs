//! The members of one event object, cut out of text that `parse_batch` has already checked is
//! JSON: one pass, nothing decoded, nothing built. It gives up (`None`) on a key spelled with an
//! escape, which only serde_json can decode, and on anything but an object; the validator then
//! reads the event with serde_json, whose answer is the same for every event this one reads
//! (a unit test and the property tests hold the two together).

use crate::batch::past_string;

/// `(key, value text)` of each member of the object `text`, in order, handed to `each`.
/// `text` must be valid JSON: on anything else the answer is unspecified (but never a panic).
pub(crate) fn members<'a>(text: &'a str, mut each: impl FnMut(&'a str, &'a str)) -> Option<()> {
    let b = text.as_bytes();
    let mut i = skip_space(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_space(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(());
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let end = past_string(b, i + 1)?;
        let key = text.get(i + 1..end - 1)?;
        if key.contains('\\') {
            return None;
        }
        i = skip_space(b, end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_space(b, i + 1);
        i = past_value(b, start)?;
        each(key, text.get(start..i)?);
        i = skip_space(b, i);
        match b.get(i) {
            Some(b',') => i = skip_space(b, i + 1),
            Some(b'}') => return Some(()),
            _ => return None,
        }
    }
}

/// Past JSON's whitespace from `i`.
fn skip_space(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Just past the value that starts at `i`: a string, an object or array (strings inside
/// followed, so brackets in them do not count), or a scalar up to the next delimiter. Strings
/// are skipped with `memchr`, the rest byte by byte (of the ways measured, the fastest on
/// events: `memchr` over the brackets too costs more than it saves).
fn past_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => past_string(b, i + 1),
        b'{' | b'[' => {
            let (mut depth, mut k) = (0usize, i);
            while let Some(&c) = b.get(k) {
                k += 1;
                match c {
                    b'"' => k = past_string(b, k)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(k);
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        _ => {
            let rest = &b[i..];
            let len = rest
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'));
            Some(i + len.unwrap_or(rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(text: &str) -> Option<Vec<(&str, &str)>> {
        let mut out = Vec::new();
        members(text, |k, v| out.push((k, v))).map(|()| out)
    }

    /// What serde_json reads as the object's members, each value as its raw text.
    fn by_serde(text: &str) -> Vec<(String, String)> {
        let mut de = serde_json::Deserializer::from_str(text);
        ordered(&mut de)
            .into_iter()
            .map(|(k, v)| (k, v.get().to_string()))
            .collect()
    }

    /// The members in order, duplicates kept (a map would merge them).
    fn ordered<'a>(
        de: &mut serde_json::Deserializer<serde_json::de::StrRead<'a>>,
    ) -> Vec<(String, &'a serde_json::value::RawValue)> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<(String, &'de serde_json::value::RawValue)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry()? {
                    out.push((k, v));
                }
                Ok(out)
            }
        }
        serde::Deserializer::deserialize_map(de, V).unwrap()
    }

    #[test]
    fn reads_what_serde_reads() {
        let objects = [
            "{}",
            " { } ",
            r#"{"a":1}"#,
            " {\n\t\"a\" :\r 1 , \"b\":[ 1 ,2 ] ,\"c\" : { \"x\" : \"}]\" } } ",
            r#"{"name":"a\"b\\","p":{"s":"{[\"","t":[[],{}]},"n":null,"t":true,"f":-1.5e+3}"#,
            r#"{"a":1,"a":2,"z":"","é":"ü"}"#,
            r#"{"e":[{"a":[{"b":"]"}]}],"x":false}"#,
        ];
        for text in objects {
            let got: Vec<(String, String)> = all(text)
                .unwrap_or_else(|| panic!("gave up on {text}"))
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, by_serde(text), "{text}");
        }
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let text = "[a-z{}\\[\\]\",:\\\\ \n\u{e9}]{0,8}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            text.prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::vec((text, inner), 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// On any object, compact or pretty, with keys and strings full of the bytes it looks
        /// for: the same members as serde_json, or a give-up on an escaped key.
        #[test]
        fn agrees_with_serde_on_any_object(
            m in prop::collection::vec(("[a-z_\"\\\\]{0,6}", json()), 0..8),
            pretty: bool,
        ) {
            let object = serde_json::Value::Object(m.into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                serde_json::to_string(&object).unwrap()
            };
            match all(&text) {
                Some(got) => {
                    let got: Vec<(String, String)> =
                        got.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
                    prop_assert_eq!(got, by_serde(&text));
                }
                None => prop_assert!(text.contains('\\'), "gave up on {}", text),
            }
        }
    }

    #[test]
    fn gives_up_on_escaped_keys_and_other_values() {
        for text in [
            r#"{"n\u0061me":"x"}"#,
            r#"{"a\"":1}"#,
            "[]",
            "\"s\"",
            "1",
            "null",
        ] {
            assert_eq!(all(text), None, "{text}");
        }
    }
}
